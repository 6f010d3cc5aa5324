"""The report of ``metagen-ppl compare``: diagnostics (each with what to change), the table, Markdown and HTML.

:func:`diagnose` reads one method's result against its budget (EM stopped at
``max_iter``, restarts at different optima, SVI's ELBO not flat, MCMC's R-hat,
ESS and divergences); :func:`table_row` makes a result a row of the table, which
:func:`table_markdown` and :func:`table_html` render; :func:`report_markdown`
and :func:`report_html` assemble the report.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import warnings
from typing import Optional

import numpy as np

from metagen_ppl.engine.align import truth_location_error
from metagen_ppl.engine.result import FitResult
from metagen_ppl.engine.svi import loss_flattened

#: MCMC's R-hat above this is reported (after label alignment).
RHAT_MAX = 1.01
#: arviz's guidance: bulk and tail ESS of at least 100 per chain.
ESS_MIN_PER_CHAIN = 100


def location_error_vs_truth(params: dict, truth, location_site) -> tuple:
    """``(error, note)``: the location error of an estimate against a data file's ``truth``.

    The true locations are ``truth[location_site]``, else ``truth["locs"]`` (the exchange format's
    key, e.g. data simulated by another model; ``note`` then says so); per-scene estimates
    ``(S, K, D)`` are matched scene by scene against per-scene truth. ``error`` is ``None`` with
    ``note`` saying why the error cannot be computed (``(None, None)`` without a truth).
    """
    if not isinstance(truth, dict):
        return None, None
    if not location_site:
        return None, ("the model declares no location site (LOCATION_SITE), so estimates cannot be matched to "
                      "the true locations")
    est = (params or {}).get(location_site)
    if est is None:
        return None, f"the estimate has no site {location_site!r} (the model's location site)"
    key = location_site if location_site in truth else ("locs" if "locs" in truth else None)
    if key is None:
        return None, (f"the truth has no {location_site!r} (the model's location site); it has "
                      f"{', '.join(map(repr, sorted(truth))) or 'nothing'}: name the true locations {location_site!r}")
    err, reason = truth_location_error(est, truth[key])
    if err is None:
        return None, f"truth[{key!r}] does not fit the estimate {location_site!r}: {reason}"
    return err, (None if key == location_site else
                 f"against truth['locs']; the model's location site is {location_site!r}")


def mcmc_summary(res: FitResult) -> dict:
    """Max R-hat and min bulk / tail ESS of the (label-aligned) draws; NaN where undefined."""
    out = {"r_hat": float("nan"), "ess_bulk": float("nan"), "ess_tail": float("nan")}
    if not res.samples:
        return out
    data = {k: v.detach().double().cpu().numpy() for k, v in res.samples.items()}
    import arviz as az  # heavy (it loads pyplot): imported only when there are draws to summarise

    ds = az.convert_to_dataset(data)
    chains = next(iter(data.values())).shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if chains > 1:
            r = az.rhat(ds)
            out["r_hat"] = float(np.nanmax([np.nanmax(np.asarray(r[k])) for k in r.data_vars]))
        for kind in ("bulk", "tail"):
            e = az.ess(ds, method=kind)
            out[f"ess_{kind}"] = float(np.nanmin([np.nanmin(np.asarray(e[k])) for k in e.data_vars]))
    return out


def diagnose(method: str, res: FitResult, budget, summary: Optional[dict] = None) -> list:
    """Warnings about one result, each with what to change (``summary``: :func:`mcmc_summary` of an
    MCMC result, if already computed)."""
    out = []
    info = res.info or {}
    if method.startswith("em"):
        if not res.converged:
            out.append(f"{method}: stopped at max_iter = {res.n_iter} before the log joint changed by less "
                       f"than tol = {budget.em_tol:g}; raise --em-max-iter (or loosen --em-tol)")
        scores = [s for s in (info.get("restart_log_joint") or []) if s is not None and math.isfinite(s)]
        if len(scores) > 1:
            spread = max(scores) - min(scores)
            if spread > max(1e-3, 1e-6 * abs(max(scores))):
                out.append(f"{method}: the {len(scores)} restarts reached different optima (log joints "
                           f"{', '.join(f'{s:.2f}' for s in sorted(scores, reverse=True))}); the best is "
                           "reported; raise --em-inits to make finding the best optimum likelier")
        for item in info.get("reinitialised") or []:
            out.append(f"{method}: a component lost all responsibility and was re-initialised ({item}); "
                       "K may be larger than the data support — try a smaller --num-objects")
            break
    elif method.startswith("svi"):
        trace = [t for t in res.trace if t is not None]
        if not loss_flattened(trace):
            out.append(f"{method}: the ELBO had not flattened after {len(trace)} steps (its last 10% still "
                       "moved by more than its noise); raise --svi-steps or lower --svi-lr")
    elif method == "mcmc":
        s = summary if summary is not None else mcmc_summary(res)
        chains = int(info.get("num_chains", 1) or 1)
        if chains < 2:
            out.append("mcmc: one chain, so R-hat cannot be computed; use --mcmc-chains 2 or more")
        elif not (s["r_hat"] <= 1.2):
            out.append(f"mcmc: max R-hat {s['r_hat']:.3f}: the chains sit in different modes even after label "
                       "alignment (see the trace plot); a longer run rarely fixes this: compare the chains' log "
                       "joints, and start the chains near EM's estimate or use more EM restarts to find the best mode")
        elif not (s["r_hat"] <= RHAT_MAX):
            out.append(f"mcmc: max R-hat {s['r_hat']:.3f} > {RHAT_MAX} (chains disagree after label alignment); "
                       "raise --mcmc-warmup and --mcmc-samples, or run more chains")
        need = ESS_MIN_PER_CHAIN * chains
        low = [k for k in ("ess_bulk", "ess_tail") if not (s[k] >= need)]
        if low:
            out.append(f"mcmc: low effective sample size (bulk {s['ess_bulk']:.0f}, tail {s['ess_tail']:.0f}; "
                       f"want >= {need} = {ESS_MIN_PER_CHAIN} per chain); raise --mcmc-samples")
        div = sum(info.get("divergences") or [0])
        if div:
            out.append(f"mcmc: {div} divergent transitions; raise --mcmc-target-accept (e.g. 0.95) or "
                       "reparametrise the model")
    return out


def agreement_warnings(rows: list) -> list:
    """EM and SVI-MAP maximise the same objective: flag when they end far apart (``rows``: the table's
    rows, whose ``log_joint`` is one computation for every method)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("log_joint") is not None
          and math.isfinite(r["log_joint"])]
    em = [r for r in ok if r["method"].startswith("em") and r["method"] != "em structure search"]
    svi = next((r for r in ok if r["method"] == "svi-map"), None)
    out = []
    if svi is not None and em:
        best = max(em, key=lambda r: r["log_joint"])
        gap = best["log_joint"] - svi["log_joint"]
        if gap > max(1.0, 1e-4 * abs(best["log_joint"])):
            out.append(f"svi-map: its log joint is {gap:.2f} below {best['method']}'s on the same objective "
                       "(a worse optimum or not converged); raise --svi-steps, or start SVI from several seeds")
    return out


def _elbo(res: FitResult) -> Optional[float]:
    if not res.method.startswith("svi"):
        return None
    trace = [t for t in res.trace if t is not None and math.isfinite(t)]
    if not trace:
        return None
    w = max(1, len(trace) // 10)
    return float(np.mean(trace[-w:]))


#: where a method's own label says its estimate is the posterior mean (MCMC)
_AT_MEAN = " at the posterior mean"


def table_row(method, res: Optional[FitResult], status: dict, setup,
              summary: Optional[dict] = None) -> dict:
    """One row of the table. ``log_likelihood`` and ``log_joint`` come from ``setup.score`` when the
    set-up defines it (one computation for every method), else from the result itself;
    ``log_likelihood_of`` says which quantity it is."""
    row = {"method": method, "status": status.get("status", "ok"), "error": status.get("error")}
    if res is None:
        return row
    acc = {}
    if setup.accuracy is not None:
        try:
            acc = {k: float(v) for k, v in (setup.accuracy(res) or {}).items()}
        except Exception as e:  # scoring must not lose the row
            acc = {}
            row["error"] = f"accuracy failed: {type(e).__name__}: {e}"
    ll, lj = float(res.log_likelihood), float(res.log_joint)
    ll_of = str((res.info or {}).get("log_likelihood_of", "log p(data|theta)"))
    if ll_of.endswith(_AT_MEAN):
        ll_of = ll_of[:-len(_AT_MEAN)]
    if setup.score is not None:
        sc = setup.score(res) or {}
        ll, lj = sc.get("log_likelihood"), sc.get("log_joint")
        ll_of = setup.score_of.get("log_likelihood", "the set-up's score")
    row.update(accuracy=acc, log_likelihood=None if ll is None else float(ll),
               log_joint=None if lj is None else float(lj), log_likelihood_of=ll_of,
               elbo=_elbo(res), n_iter=int(res.n_iter),
               iter_kind="draws" if method == "mcmc" else ("steps" if method.startswith("svi") else "iterations"),
               converged=bool(res.converged), wall_time_s=float(res.wall_time_s))
    if method == "mcmc":
        row.update(summary if summary is not None else mcmc_summary(res))
        row["divergences"] = int(sum(res.info.get("divergences") or [0]))
    return row


#: what each accuracy column of the built-in models measures
ACCURACY_DEFINITIONS = {
    "location error": "mean distance between matched estimated and true objects (Hungarian matching; for the "
                      "detector and projective models only pairs of the same category within 1 m match)",
    "assignment accuracy": "share of observations whose most probable object is the true one, after matching "
                           "estimated to true objects",
    "category accuracy": "share of objects whose estimated category is the true one, after the same matching",
    "object F1": "harmonic mean of precision and recall",
    "precision": "matched estimated objects / estimated objects (same category, within 1 m, Hungarian "
                 "matching, pooled over scenes)",
    "recall": "matched true objects / true objects (same matching)",
    "rates MAE": "mean absolute error of the learned detection rates against the simulated detector's",
    "hallucination MAE": "mean absolute error of the learned hallucination rates against the simulated "
                         "detector's",
}


def column_definitions(rows: list, setup) -> list:
    """``(column, definition)`` for every column of the table that the rows fill."""
    acc_names = []
    for r in rows:
        for k in (r.get("accuracy") or {}):
            if k not in acc_names:
                acc_names.append(k)
    own = dict(getattr(setup, "definitions", None) or {})
    out = [(k, own.get(k) or ACCURACY_DEFINITIONS.get(k) or "an accuracy measure of the model's set-up "
            "(prepare_comparison)") for k in acc_names]
    labels = {r["method"]: r["log_likelihood_of"] for r in rows if r.get("log_likelihood_of")}
    if len(set(labels.values())) <= 1:
        what = next(iter(labels.values()), "log p(data|theta)")
        ll = (f"{what}, the same computation for every method (the discrete sites summed out exactly), at each "
              "method's estimate: EM and SVI-MAP the mode, SVI-normal the guide's mean, MCMC the label-aligned "
              "posterior mean")
    else:
        ll = ("not one quantity across methods: " + "; ".join(f"{m}: {q}" for m, q in labels.items())
              + " (the rows do not compare on this column)")
    out.append(("log lik. at estimate", ll))
    lj = getattr(setup, "score_of", {}).get("log_joint") if getattr(setup, "score", None) else None
    out.append(("log joint", (lj or "log lik. + log p(theta), the prior log density of the continuous sites")
                + " at the estimate (EM's and SVI-MAP's objective)"))
    out.append(("ELBO", "SVI's objective, mean over the last 10% of steps"))
    out.append(("iterations / draws", "EM iterations of the best restart, SVI steps, or MCMC draws after warm-up "
                "(all chains)"))
    out.append(("converged", "EM: the log joint changed by less than tol; SVI: the loss flattened; MCMC: max "
                f"R-hat of the label-aligned draws <= {RHAT_MAX} (needs 2 or more chains)"))
    out.append(("wall (s)", "the method's own wall time (set-up and plots excluded)"))
    out.append(("R-hat, ESS bulk, ESS tail", "MCMC after label alignment: max R-hat and min bulk / tail ESS "
                f"over all scalars (targets: R-hat <= {RHAT_MAX}, ESS >= {ESS_MIN_PER_CHAIN} per chain)"))
    return out


def _fmt(v, spec=".3f"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


def _table_cells(rows: list) -> tuple:
    """The table once, for both renderings: ``(head, body)``; a body row is ``(method, status, error, cells)``
    with ``error`` set (and ``cells`` empty) for a failed method."""
    acc_names = []
    for r in rows:
        for k in (r.get("accuracy") or {}):
            if k not in acc_names:
                acc_names.append(k)
    head = (["method", "status"] + acc_names + ["log lik. at estimate", "log joint", "ELBO", "iterations / draws",
                                              "converged", "wall (s)", "R-hat", "ESS bulk", "ESS tail"])
    body = []
    for r in rows:
        if r.get("status") != "ok":
            body.append((r["method"], r.get("status"), r.get("error") or "", []))
            continue
        acc = r.get("accuracy") or {}
        cells = [_fmt(acc.get(k)) for k in acc_names] + [
            _fmt(r.get("log_likelihood"), ".2f"), _fmt(r.get("log_joint"), ".2f"), _fmt(r.get("elbo"), ".2f"),
            f"{r.get('n_iter')} {r.get('iter_kind', '')}".strip(),
            "yes" if r.get("converged") else "no", _fmt(r.get("wall_time_s"), ".2f"),
            _fmt(r.get("r_hat")), _fmt(r.get("ess_bulk"), ".0f"), _fmt(r.get("ess_tail"), ".0f")]
        body.append((r["method"], "ok", None, cells))
    return head, body


def table_markdown(rows: list) -> str:
    """The comparison table (Markdown)."""
    head, body = _table_cells(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for method, status, error, cells in body:
        if error is not None:
            cells = [f"**{status}**: " + error.replace("|", "\\|")] + [""] * (len(head) - 2)
        else:
            cells = [status] + cells
        lines.append("| " + " | ".join([method] + cells) + " |")
    return "\n".join(lines)


def table_html(rows: list) -> str:
    head, body = _table_cells(rows)
    out = []
    for method, status, error, cells in body:
        if error is not None:
            tds = [f"<b>{html.escape(str(status))}</b>: {html.escape(error)}"] + [""] * (len(head) - 2)
        else:
            tds = [html.escape(c) for c in [status] + cells]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in [html.escape(method)] + tds) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(out) + "</tbody></table>")


def report_markdown(title, header_lines, table, warns, notes, figures, definitions=()) -> str:
    """The report as Markdown (``definitions``: :func:`column_definitions`)."""
    parts = [f"# {title}", "", *header_lines, "", "## Results", "", table, ""]
    parts += ["## Diagnostics", ""]
    parts += [f"* {w}" for w in warns] if warns else ["* no warnings: every method converged by its own test."]
    parts.append("")
    if notes:
        parts += ["## Notes", "", *[f"* {n}" for n in notes], ""]
    if definitions:
        parts += ["## Column definitions", "", *[f"* **{k}**: {v}." for k, v in definitions], ""]
    for caption, rel in figures:
        parts += [f"## {caption}", "", f"![{caption}]({rel})", ""]
    return "\n".join(parts)


def _md_inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return out


def report_html(title, header_lines, rows, warns, notes, figures, out_dir, definitions=()) -> str:
    """A self-contained page: the same content as the Markdown, images embedded as base64."""
    table = table_html(rows)
    imgs = []
    for caption, rel in figures:
        path = os.path.join(out_dir, rel)
        try:
            with open(path, "rb") as fh:
                b64 = base64.b64encode(fh.read()).decode("ascii")
        except OSError:
            continue
        imgs.append(f"<h2>{html.escape(caption)}</h2><img alt=\"{html.escape(caption)}\" "
                    f"src=\"data:image/png;base64,{b64}\">")
    warn_html = ("<ul class=\"warn\">" + "".join(f"<li>{_md_inline(w)}</li>" for w in warns) + "</ul>"
                 if warns else "<p>No warnings: every method converged by its own test.</p>")
    note_html = ("<h2>Notes</h2><ul>" + "".join(f"<li>{_md_inline(n)}</li>" for n in notes) + "</ul>") if notes else ""
    note_html += ("<h2>Column definitions</h2><ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {_md_inline(v)}.</li>"
                                                             for k, v in definitions) + "</ul>") if definitions else ""
    header = "".join(f"<p>{_md_inline(h)}</p>" for h in header_lines if h)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child,td:nth-child(2){text-align:left}.warn li{color:#a40}"
             "img{max-width:100%;border:1px solid #ddd}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{header}<h2>Results</h2>{table}"
            f"<h2>Diagnostics</h2>{warn_html}{note_html}{''.join(imgs)}</body></html>")
