"""Benchmark: time per EM iteration on a 3D Gaussian mixture (issue #2, item 8).

For K objects (default 10) and N points (default 1e4, 1e5, 1e6) this script
draws one data set per N from the baseline generative story (fixed seed) and
times, in one process, on the same data and from the same starting point:

(a) our engine, closed-form path: ``fit_em("baseline", ..., mstep="closed")``;
(b) our engine, optimiser path: ``fit_em(..., mstep="optimizer")`` (LBFGS M-step);
(c) scikit-learn ``GaussianMixture(covariance_type="spherical")``;
(d) a plain hand-written torch EM loop for the same MAP model as (a)
    (spherical, shared scale, the baseline's priors).

How each per-iteration figure is obtained
-----------------------------------------
* (a) ``fit_em(spec, ..., mstep="closed", max_iter=M)`` with a negative ``tol``
  (so it never stops early), where ``spec`` is the baseline's ``ModelSpec``
  whose ``closed_form_mstep`` is wrapped to record the clock at every call
  (one call per iteration). Per iteration = (last stamp - first stamp) / (M - 1):
  exactly fit_em's own loop (M-step, E-step, convergence test, bookkeeping),
  without the fixed costs (model discovery, initialisation, the first E-step,
  the final pointwise log-likelihood; reported separately as
  ``a_fixed_overhead_ms = T(M) - M * a``). ``a loop`` is a cross-check: a loop
  ``em.estep(values)`` + ``closed_form_mstep`` built from the engine's public
  pieces, timed over M iterations plus the initial E-step, divided by M.
* (b) the optimiser path has no per-iteration hook; its fixed costs are those
  of (a), so ``b = (T_b(M_b) - a_fixed_overhead) / M_b``.
* (c) a ``GaussianMixture`` subclass whose ``_m_step`` records the clock; all
  of weights/means/precisions are given (no k-means), ``tol=0``; per iteration
  = (last stamp - first stamp) / (M - 1), i.e. sklearn's own loop (E-step,
  M-step, lower bound, convergence test), without input validation, setup and
  its final extra E-step.
* (d) a loop of M iterations (E-step with log-likelihood, M-step), total / M,
  with responsibilities laid out ``(K, N)`` (the faster layout on CPU; the
  textbook ``(N, K)`` layout is timed too and shown as ``d (N,K)``).

Each method is warmed up once before timing; every figure is the median of
``--repeats`` runs, taken round-robin over the methods so that a change of
machine load hits all of them alike. ``--clock cpu`` times CPU seconds of this
process instead of wall time: on a shared machine, with ``--threads 1``, that
is the figure least disturbed by other processes. ``--mallopt`` tunes glibc's
allocator for the whole process (see ``tune_malloc``). A check line compares
the final log-likelihood of (a) and (d) after M iterations from the same
start (they run the same algorithm).

Examples
--------
    python comparisons/bench_em.py                       # full benchmark
    python comparisons/bench_em.py --threads 1 --clock cpu   # on a busy machine
    python comparisons/bench_em.py --sizes 1e4 --repeats 1
    python comparisons/bench_em.py --profile 1e5         # cProfile of path (a)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch


from metagen_ppl.engine.em import fit_em
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.registry import load_model
from metagen_ppl.models import baseline

ROOT = Path(__file__).resolve().parents[1]  # the source checkout (outputs go to ROOT/comparisons/out)

# the baseline model's prior hyper-parameters (its defaults); (d) uses the same
PRIOR = dict(loc_prior_mean=0.0, loc_prior_scale=10.0, weight_concentration=1.0,
             scale_prior_shape=2.0, scale_prior_rate=1.0)
CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of this process)
NEVER_STOP = None  # tol=None: fit_em runs exactly max_iter iterations


# ---------------------------------------------------------------------------- data / init
def make_data(n, k, seed, dtype):
    """One draw from the baseline generative story (direct torch sampling: fast at 1e6)."""
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(k, 3, generator=g, dtype=torch.float64) * PRIOR["loc_prior_scale"]
    gam = -torch.log(torch.rand(k, generator=g, dtype=torch.float64))  # Dirichlet(1) via Exp(1)
    weights = gam / gam.sum()
    z = torch.multinomial(weights, n, replacement=True, generator=g)
    x = locs[z] + torch.randn(n, 3, generator=g, dtype=torch.float64)  # noise scale 1
    return x.to(dtype).contiguous()


def make_init(x, k, seed):
    """Shared starting point: the baseline's own k-means++ initialisation."""
    g = torch.Generator().manual_seed(seed)
    init = baseline.initialize({"x": x}, k, g)
    return {n: v.detach().to(x.dtype) for n, v in init.items()}


# ---------------------------------------------------------------------------- (a), (b)
def _stamped_spec():
    """The baseline's ModelSpec with a closed-form M-step that records the clock per call."""
    spec = load_model("baseline")
    stamps = []
    inner = spec.closed_form_mstep

    def closed_form_mstep(*a, **kw):
        stamps.append(CLOCK())
        return inner(*a, **kw)

    return dataclasses.replace(spec, closed_form_mstep=closed_form_mstep), stamps


def per_iter(stamps):
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def run_engine(x, k, init, mstep, iters):
    """``fit_em``; returns (total time, result, per-iteration time or None)."""
    spec, stamps = _stamped_spec()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = CLOCK()
        res = fit_em(spec, {"x": x}, k, seed=0, num_inits=1, mstep=mstep,
                     tol=NEVER_STOP, max_iter=iters, init=init)
        dt = CLOCK() - t0
    return dt, res, (per_iter(stamps) if len(stamps) >= 2 else None)


def run_engine_loop(x, k, init, iters):
    """E-step + closed-form M-step from the engine's public pieces (as fit_em's loop)."""
    em = EnumeratedModel(baseline.model, {"x": x}, k)
    values = dict(init)
    t0 = CLOCK()
    est = em.estep(values)
    for _ in range(iters):
        upd = baseline.closed_form_mstep({"x": x}, est.marginals, values, k)
        values = dict(values)
        values.update({n: v.detach() for n, v in upd.items()})
        est = em.estep(values)
    dt = CLOCK() - t0
    return dt, est, values


# ---------------------------------------------------------------------------- (c)
def _stamped_gmm_class():
    from sklearn.mixture import GaussianMixture

    class StampedGaussianMixture(GaussianMixture):
        """GaussianMixture recording the clock at each M-step (one per EM iteration)."""

        def _m_step(self, X, log_resp, **kw):
            self.stamps_.append(CLOCK())
            return super()._m_step(X, log_resp, **kw)

    return StampedGaussianMixture


def run_sklearn(xnp, k, init, iters):
    """``GaussianMixture.fit``; returns (per-iteration time, model, total time)."""
    gm = _stamped_gmm_class()(
        n_components=k, covariance_type="spherical", tol=0.0, max_iter=iters, n_init=1,
        init_params="random_from_data", random_state=0,
        weights_init=(init["weights"].double() / init["weights"].double().sum()).numpy(),
        means_init=init["locs"].double().numpy(),
        precisions_init=(torch.ones(k, dtype=torch.float64) / float(init["scale"]) ** 2).numpy())
    gm.stamps_ = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = CLOCK()
        gm.fit(xnp)
        dt = CLOCK() - t0
    return per_iter(gm.stamps_), gm, dt


# ---------------------------------------------------------------------------- (d)
def _torch_em(x, init, iters, layout):
    n, d = x.shape
    m0, s0 = PRIOR["loc_prior_mean"], PRIOR["loc_prior_scale"]
    alpha, a, b = PRIOR["weight_concentration"], PRIOR["scale_prior_shape"], PRIOR["scale_prior_rate"]
    prec0 = 1.0 / s0 ** 2
    locs, weights, scale = init["locs"].clone(), init["weights"].clone(), init["scale"].clone()
    xx = (x * x).sum(-1)  # (N,), a data constant
    xx_total = xx.sum()
    xT = x.T.contiguous()
    log2pi = math.log(2 * math.pi)

    def estep(locs, weights, scale):
        s2 = scale * scale
        c = -0.5 / s2
        # log w_k + log N(x_n | mu_k, s2 I) = c (|x|^2 - 2 x.mu + |mu|^2) - D/2 log(2 pi s2) + log w_k
        bias = c * (locs * locs).sum(-1) + torch.log(weights) - 0.5 * d * (log2pi + torch.log(s2))
        if layout == "KN":
            logp = torch.addmm((bias.unsqueeze(-1) + c * xx), locs, xT, alpha=-2.0 * c)  # (K, N)
            lse = torch.logsumexp(logp, 0, keepdim=True)
        else:
            logp = torch.addmm((bias + c * xx.unsqueeze(-1)), x, locs.T, alpha=-2.0 * c)  # (N, K)
            lse = torch.logsumexp(logp, -1, keepdim=True)
        resp = logp.sub_(lse).exp_()
        return resp, lse.sum()

    resp, ll = estep(locs, weights, scale)
    for _ in range(iters):
        if layout == "KN":
            nk, sx = resp.sum(1), resp @ x
        else:
            nk, sx = resp.sum(0), resp.T @ x
        s2 = scale * scale
        locs = (sx / s2 + m0 * prec0) / (nk / s2 + prec0).unsqueeze(-1)
        w = (nk + (alpha - 1.0)).clamp_min(0.0)
        weights = w / w.sum()
        sq = xx_total - 2.0 * (locs * sx).sum() + (nk * (locs * locs).sum(-1)).sum()
        scale = ((sq.clamp_min(0.0) + 2.0 * b) / (d * n + 2.0 * a + 1.0)).sqrt()
        resp, ll = estep(locs, weights, scale)
        float(ll)  # the convergence test needs the value on the host (as every EM loop does)
    return {"locs": locs, "weights": weights, "scale": scale}, float(ll)


def torch_em(x, init, iters, layout="KN"):
    """Hand-written MAP-EM for the baseline model (shared spherical scale).

    Same updates as ``metagen_ppl.models.baseline.closed_form_mstep``; returns the final
    parameters and ``log p(x | theta)`` at them (one E-step after the last M-step,
    as fit_em reports it). ``layout="KN"`` keeps responsibilities as ``(K, N)``
    (logsumexp over the outer dim: the faster layout on CPU); ``"NK"`` is the
    textbook ``(N, K)`` layout.
    """
    return _torch_em(x, init, iters, layout)


def run_torch(x, init, iters, layout="KN"):
    t0 = CLOCK()
    params, ll = torch_em(x, init, iters, layout)
    return CLOCK() - t0, params, ll


# ---------------------------------------------------------------------------- helpers
def median_of(fn, repeats):
    vals, last = [], None
    for _ in range(repeats):
        out = fn()
        vals.append(out[0])
        last = out
    return statistics.median(vals), vals, last


def fmt(v, width=9):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    return f"{v:{width}.2f}"


def parse_sizes(vals):
    return [int(float(v)) for v in vals]


def bench_one(n, args, dtype, log):
    k = args.K
    x = make_data(n, k, args.seed, dtype)
    init = make_init(x, k, args.seed + 1)
    xnp = x.numpy()
    M = args.iters
    Mb = args.iters_optimizer.get(n, args.iters_optimizer.get("default", 2))
    Mc = args.iters_sklearn or M
    Md = args.iters_torch or M
    rep = args.repeats
    row = {"N": n, "K": k, "dtype": args.dtype, "iters": {"a": M, "b": Mb, "c": Mc, "d": Md}}

    # warm-up, once per method
    run_engine(x, k, init, "closed", 2)
    run_engine_loop(x, k, init, 1)
    run_sklearn(xnp, k, init, 2)
    run_torch(x, init, 2)
    run_torch(x, init, 2, "NK")

    # timed repeats, round-robin over the methods so that a change of machine load
    # between repeats hits every method alike
    t = {key: [] for key in ("a", "aT", "al", "c", "cT", "d", "dNK")}
    for _ in range(rep):
        dt, res_a, it = run_engine(x, k, init, "closed", M)
        t["a"].append(it)
        t["aT"].append(dt)
        dt, est_l, _ = run_engine_loop(x, k, init, M)
        t["al"].append(dt / M)
        it, gm, dt = run_sklearn(xnp, k, init, Mc)
        t["c"].append(it)
        t["cT"].append(dt)
        dt, par_d, ll_d = run_torch(x, init, Md)
        t["d"].append(dt / Md)
        dt, _, ll_dnk = run_torch(x, init, Md, "NK")
        t["dNK"].append(dt / Md)
    med = {key: statistics.median(v) for key, v in t.items()}
    row["raw_s"] = t

    a = med["a"]
    overhead = med["aT"] - M * a
    row.update(a_ms=1e3 * a, a_fixed_overhead_ms=1e3 * overhead, a_inclusive_ms=1e3 * med["aT"] / M,
               a_n_iter=res_a.n_iter, a_loop_ms=1e3 * med["al"])
    log(f"  (a) fit_em closed : {1e3 * a:8.2f} ms/iter  (fit_em total {med['aT']:.3f}s for {M} iters, "
        f"fixed overhead {1e3 * overhead:.1f} ms, n_iter={res_a.n_iter})")
    log(f"  (a') estep+mstep  : {1e3 * med['al']:8.2f} ms/iter  ({M} iters + initial E-step, /{M})")
    c = med["c"]
    row.update(c_ms=1e3 * c, c_inclusive_ms=1e3 * med["cT"] / Mc, c_n_iter=int(gm.n_iter_),
               c_fixed_overhead_ms=1e3 * (med["cT"] - Mc * c), c_avg_loglik=float(gm.score(xnp)))
    log(f"  (c) sklearn       : {1e3 * c:8.2f} ms/iter  (fit total {med['cT']:.3f}s, n_iter_={gm.n_iter_})")
    d = med["d"]
    row.update(d_ms=1e3 * d, d_log_lik=ll_d, d_nk_ms=1e3 * med["dNK"], d_nk_log_lik=ll_dnk)
    log(f"  (d) torch loop    : {1e3 * d:8.2f} ms/iter  ((K, N) layout; textbook (N, K) layout "
        f"{1e3 * med['dNK']:.2f} ms/iter)")

    # (b) optimiser path (slow: fewer iterations, and a single timed run at large N)
    if Mb > 0:
        run_engine(x[: min(n, 2_000)], k, init, "optimizer", 1)  # warm-up on a slice
        rep_b = 1 if n >= args.optimizer_single_repeat_from else rep
        t_bM, raw_bM, (_, res_b, _) = median_of(lambda: run_engine(x, k, init, "optimizer", Mb), rep_b)
        b = (t_bM - overhead) / Mb
        row.update(b_ms=1e3 * b, b_TM_s=raw_bM, b_n_iter=res_b.n_iter, b_repeats=rep_b,
                   b_log_joint=res_b.log_joint)
        _, res_a_b, _ = run_engine(x, k, init, "closed", Mb)  # closed path after as many iterations
        row["a_log_joint_at_b_iters"] = res_a_b.log_joint
        log(f"  (b) fit_em optim. : {1e3 * b:8.2f} ms/iter  (T({Mb})={t_bM:.2f}s, {rep_b} run(s); "
            f"log joint {res_b.log_joint:.6f} vs closed path {res_a_b.log_joint:.6f} after {Mb} iter)")
    else:
        row.update(b_ms=None)

    # check: (a) and (d) after the same number of iterations from the same init
    if Md == M:
        rel = abs(res_a.log_likelihood - ll_d) / abs(ll_d)
        dloc = float((res_a.params["locs"] - par_d["locs"]).abs().max())
        tol = 1e-6 if dtype == torch.float64 else 1e-4
        ok = rel <= tol
        row.update(check_a_log_lik=res_a.log_likelihood, check_d_log_lik=ll_d, check_rel=rel,
                   check_max_abs_locs=dloc, check_ok=ok,
                   check_loop_rel=abs(est_l.log_likelihood - ll_d) / abs(ll_d))
        log(f"  check N={n}: after {M} iters log p(x|theta) engine={res_a.log_likelihood:.10g} "
            f"torch={ll_d:.10g} rel.diff={rel:.2e} max|dlocs|={dloc:.2e} -> "
            f"{'OK' if ok else 'MISMATCH'} (tol {tol:g}); sklearn (own per-component variances) "
            f"avg loglik {row['c_avg_loglik']:.6f} vs torch {ll_d / n:.6f}")
    row["a_over_c"] = row["a_ms"] / row["c_ms"]
    row["a_over_d"] = row["a_ms"] / row["d_ms"]
    return row


def tune_malloc():
    """glibc only: serve large blocks from the heap and keep freed memory (no mmap/munmap per
    temporary), which removes the page-fault cost of every fresh (K, N) buffer. Process-wide:
    it speeds up every method of this benchmark, not only ours."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):
        return False


def engine_fingerprint():
    """Short hashes of the engine files timed (the engine changes; results refer to one version)."""
    import hashlib

    out = {}
    for rel in ("metagen_ppl/em.py", "metagen_ppl/enumeration.py", "metagen_ppl/distributions.py",
                "models/baseline.py"):
        f = ROOT / rel
        if f.is_file():
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()[:12]
    return out


def table(rows, args):
    head = (f"{'N':>9} | {'a closed':>9} | {'a loop':>9} | {'b optim':>9} | {'c sklearn':>9} | "
            f"{'d torch':>9} | {'d (N,K)':>9} | {'a/c':>6} | {'a/d':>6}")
    lines = [f"ms per EM iteration, K={args.K}, D=3, dtype={args.dtype}, "
             f"torch threads={torch.get_num_threads()}, {args.clock} clock, median of {args.repeats}"
             f"{', glibc malloc tuned' if args.mallopt else ''}", head,
             "-" * len(head)]
    for r in rows:
        lines.append(f"{r['N']:>9.0e} | {fmt(r['a_ms'])} | {fmt(r['a_loop_ms'])} | {fmt(r['b_ms'])} | "
                     f"{fmt(r['c_ms'])} | {fmt(r['d_ms'])} | {fmt(r['d_nk_ms'])} | {r['a_over_c']:6.2f} | "
                     f"{r['a_over_d']:6.2f}")
    lines.append("targets (N >= 1e5): a/c <= 0.5, a/d <= 1.3")
    return "\n".join(lines)


def markdown(rows, args):
    out = [f"# EM benchmark (K={args.K}, D=3, {args.dtype}, torch threads={torch.get_num_threads()}, {args.clock} clock)",
           "", "ms per EM iteration (median of repeats); see the script's docstring for how each is measured.",
           "", "| N | (a) engine closed | (a') estep+mstep loop | (b) engine optimiser | (c) sklearn | "
           "(d) torch loop | (d) with (N, K) layout | a/c | a/d |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = "-" if r.get("b_ms") is None else f"{r['b_ms']:.1f} ({r['iters']['b']} it)"
        out.append(f"| {r['N']:.0e} | {r['a_ms']:.2f} | {r['a_loop_ms']:.2f} | {b} | {r['c_ms']:.2f} | "
                   f"{r['d_ms']:.2f} | {r['d_nk_ms']:.2f} | {r['a_over_c']:.2f} | {r['a_over_d']:.2f} |")
    out += ["", "Targets at N >= 1e5: a/c <= 0.5, a/d <= 1.3.", ""]
    for r in rows:
        if "check_rel" in r:
            out.append(f"* check N={r['N']:.0e}: engine vs torch log-likelihood rel. diff "
                       f"{r['check_rel']:.2e}, max |d locs| {r['check_max_abs_locs']:.2e} "
                       f"({'OK' if r['check_ok'] else 'MISMATCH'})")
    return "\n".join(out) + "\n"


def profile(n, args, dtype):
    import cProfile
    import pstats

    k = args.K
    x = make_data(n, k, args.seed, dtype)
    init = make_init(x, k, args.seed + 1)
    run_engine(x, k, init, "closed", 2)
    prof = cProfile.Profile()
    prof.enable()
    run_engine(x, k, init, "closed", args.iters)
    prof.disable()
    st = pstats.Stats(prof)
    st.sort_stats("cumulative").print_stats(40)
    st.sort_stats("tottime").print_stats(25)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="See the module docstring for how each figure is measured.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["1e4", "1e5", "1e6"], help="values of N (default 1e4 1e5 1e6)")
    p.add_argument("--K", type=int, default=10, help="number of objects / components (default 10)")
    p.add_argument("--iters", type=int, default=20, help="EM iterations M for (a), (c), (d) (default 20; >= 2)")
    p.add_argument("--iters-sklearn", type=int, default=None, help="iterations for (c) (default: --iters)")
    p.add_argument("--iters-torch", type=int, default=None, help="iterations for (d) (default: --iters)")
    p.add_argument("--iters-optimizer", nargs="+", default=["1e4:3", "1e5:2", "1e6:1"],
                   help="iterations for (b) per N as N:M pairs, or one number for all "
                        "(default 1e4:3 1e5:2 1e6:1; 0 skips (b))")
    p.add_argument("--optimizer-single-repeat-from", type=float, default=1e6,
                   help="time (b) once (no repeats) from this N up (default 1e6)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure; the median is kept (default 3)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--threads", type=int, default=None, help="torch (and BLAS) threads")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: time.perf_counter (default); cpu: time.process_time, CPU seconds of this "
                        "process summed over its threads -- robust to other load on a shared machine, "
                        "meaningful as a per-iteration cost with --threads 1")
    p.add_argument("--mallopt", action="store_true",
                   help="tune glibc malloc (no mmap for large blocks, no trimming) for the whole process "
                        "before timing: shows how much of each method's time is page faults on fresh "
                        "buffers (default: off, the allocator as users get it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "comparisons" / "out" / "bench_em"),
                   help="output folder for bench_em.json / bench_em.md")
    p.add_argument("--profile", type=float, default=None, metavar="N",
                   help="instead of the benchmark, cProfile path (a) at this N and print the top functions")
    args = p.parse_args(argv)
    if args.iters < 2:
        p.error("--iters must be at least 2")
    for name in ("iters_sklearn", "iters_torch"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            p.error(f"--{name.replace('_', '-')} must be at least 2")
    iters_b = {}
    for item in args.iters_optimizer:
        if ":" in item:
            nn, mm = item.split(":")
            iters_b[int(float(nn))] = int(mm)
        else:
            iters_b["default"] = int(item)
    args.iters_optimizer = iters_b
    dtype = getattr(torch, args.dtype)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads)  # sklearn's BLAS / OpenMP pools
        except ImportError:
            pass
    malloc_tuned = tune_malloc() if args.mallopt else False
    if args.mallopt and not malloc_tuned:
        print("warning: --mallopt needs glibc; running with the default allocator", file=sys.stderr)
    if args.profile:
        profile(int(args.profile), args, dtype)
        return 0

    def log(msg):
        print(msg, flush=True)

    log(f"bench_em: torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, dtype {args.dtype}")
    rows = []
    for n in parse_sizes(args.sizes):
        log(f"N = {n:.0e}")
        rows.append(bench_one(n, args, dtype, log))
    txt = table(rows, args)
    print()
    print(txt)
    checks = [r for r in rows if "check_ok" in r]
    if checks:
        print("check (a) vs (d) same init, same iterations: " + ", ".join(
            f"N={r['N']:.0e} rel {r['check_rel']:.1e} {'OK' if r['check_ok'] else 'MISMATCH'}" for r in checks))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "dtype": args.dtype, "clock": args.clock, "K": args.K, "iters": args.iters, "repeats": args.repeats,
            "python": sys.version.split()[0], "malloc_tuned": malloc_tuned,
            "engine_sha256": engine_fingerprint()}
    (out / "bench_em.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=float))
    (out / "bench_em.md").write_text(markdown(rows, args) + "\n```\n" + txt + "\n```\n")
    print(f"saved {out / 'bench_em.json'} and {out / 'bench_em.md'}")
    return 0 if all(r.get("check_ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
