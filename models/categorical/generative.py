"""M2 ``categorical``: objects with a location and a category, seen by a confusable detector.

Generative story (DESIGN.md section 2, model M2)
------------------------------------------------
A scene holds ``K`` objects; object ``k`` has a location ``mu_k`` in R^3 and a
category ``c_k`` in ``0..C-1``. The detector reports ``N`` detections; each
picks the object that produced it (``z_n``), lands near that object's location
and reports a category ``o_n`` drawn from row ``c_{z_n}`` of the detector's
confusion matrix ``A`` (C x C, rows sum to 1)::

    mu_k   ~ Normal(m0, s0^2 I)                         site "locs"      (K, 3)
    pi     ~ Dirichlet(alpha 1_K)                       site "weights"   (K,)
    sigma  : sigma^2 ~ InverseGamma(a, b)               site "scale"     ()
    A_c    ~ Dirichlet(beta_off 1 + (beta_diag - beta_off) e_c)
                                                        site "confusion" (C, C), unless given
    c_k    ~ Categorical(rho)        k = 0..K-1         sites "c_0" .. "c_{K-1}"  enumerated
    z_n    ~ Categorical(pi)                            site "z"         (N,)  enumerated
    x_n    ~ Normal(mu_{z_n}, sigma^2 I)                site "x"         (N, 3) observed
    o_n    ~ Categorical(A[c_{z_n}])                    site "o"         (N,)  observed

Each ``c_k`` is its own site, sampled in a Python loop outside the data plate,
so under parallel enumeration each gets its own enumeration dimension and the
engine sums ``c`` and ``z`` jointly (exact; the ``o`` factor has ``K C^K N``
entries, so this is for small ``K``). ``poutine.condition(model, data={"c_0":
tensor(2), ...})`` fixes the categories instead (the ``sample`` strategy of
:mod:`metagen_ppl.models.categorical.strategies`); ``fit_em(discrete=["c_0", ...])``
makes them discrete parameters of EM, updated by :func:`discrete_update` (the
``mstep`` strategy).

Identifiability: with ``A`` learned and a uniform ``rho``, permuting category
labels (of every ``c_k`` and of the rows of ``A``) leaves the likelihood
unchanged; only the confusion prior, which puts more mass on the diagonal
(``beta_diag > beta_off``: "the detector is mostly right"), picks the labelling
in which ``A`` is diagonal-heavy. Rows of ``A`` for categories no object has are
informed by the prior only.

Options (keyword arguments of :func:`model`, shared by every hook)
------------------------------------------------------------------
num_categories : int
    ``C``; default: from ``data["num_categories"]``, else from ``confusion`` or
    ``category_prior``, else ``max(o) + 1`` (which undercounts if the last
    categories are never observed: give ``C`` explicitly).
confusion : (C, C) array, optional
    Known confusion matrix (rows sum to 1); learned (site ``"confusion"``) when ``None``.
category_prior : (C,) array, optional
    ``rho``, prior of each ``c_k``; default uniform.
weights, scale : as in :mod:`metagen_ppl.models.baseline` (fixed when given).
confusion_concentration, confusion_diag_concentration : float
    ``beta_off`` (default 2) and ``beta_diag`` (default 6) of the Dirichlet
    prior of each row of ``A``; both must be >= 1 so the MAP row exists.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex

from metagen_ppl.errors import DataError
from metagen_ppl.io import check_categories, check_observations
from metagen_ppl.models import baseline
from metagen_ppl.util import seeded

COMPONENT_SITES = {"locs": 0, "weights": 0}
LOCATION_SITE = "locs"

#: Default Dirichlet concentrations of a confusion row (off-diagonal, diagonal).
CONFUSION_CONCENTRATION = 2.0
CONFUSION_DIAG_CONCENTRATION = 6.0

_ROW_TOL = 1e-6


def category_site(k: int) -> str:
    """Name of the site of object ``k``'s category."""
    return f"c_{k}"


# ---------------------------------------------------------------------------- validation
def num_categories_of(data, *, num_categories=None, confusion=None, category_prior=None) -> int:
    """Resolve ``C`` from the options and the data, and check they agree.

    Raises
    ------
    DataError
        If two sources give different ``C``, or none gives one.
    """
    sources = []
    if num_categories is not None:
        sources.append(("num_categories", int(num_categories)))
    nc = data.get("num_categories") if isinstance(data, dict) else None
    if nc is not None:
        sources.append(("data['num_categories']", int(nc)))
    if confusion is not None:
        a = torch.as_tensor(confusion)
        if a.dim() != 2 or a.shape[0] != a.shape[1]:
            raise DataError(f"confusion must be a square (C, C) matrix, got shape {tuple(a.shape)}")
        sources.append(("confusion", int(a.shape[0])))
    if category_prior is not None:
        sources.append(("category_prior", int(torch.as_tensor(category_prior).numel())))
    if sources:
        first_name, first = sources[0]
        for name, value in sources[1:]:
            if value != first:
                raise DataError(f"number of categories mismatch: {first_name} says C = {first} "
                                f"but {name} says C = {value}; make them agree")
        C = first
    else:
        o = data.get("o") if isinstance(data, dict) else None
        if o is None or not torch.is_tensor(o) or o.numel() == 0:
            raise DataError("cannot tell the number of categories C: pass num_categories=C "
                            "(or a confusion matrix, or observed categories data['o'])")
        C = int(o.max()) + 1
    if C < 1:
        raise DataError(f"the number of categories must be at least 1, got C = {C}")
    return C


def check_confusion(confusion, C: int, dtype=None) -> torch.Tensor:
    """A known confusion matrix as a tensor, after checking shape, sign and row sums."""
    a = torch.as_tensor(confusion, dtype=dtype)
    if not a.is_floating_point():
        a = a.to(torch.get_default_dtype() if dtype is None else dtype)
    if a.shape != (C, C):
        raise DataError(f"confusion must have shape (C, C) = ({C}, {C}), got {tuple(a.shape)}")
    if not torch.isfinite(a).all() or (a < 0).any():
        raise DataError("confusion has negative, NaN or inf entries; it must hold probabilities")
    rows = a.sum(-1)
    bad = ((rows - 1).abs() > _ROW_TOL).nonzero().flatten().tolist()
    if bad:
        raise DataError(f"rows of the confusion matrix must sum to 1; row {bad[0]} sums to "
                        f"{float(rows[bad[0]]):.6g} (rows {bad} are off)")
    return a


def check_categorical_data(data, num_objects, **options) -> int:
    """Validate the observed categories against ``C``; return ``C``.

    Checks ``data["o"]`` is an integer tensor of shape ``(N,)`` matching
    ``data["x"]``, with values in ``0..C-1``; ``confusion`` and
    ``category_prior`` where given.
    """
    C = num_categories_of(data, num_categories=options.get("num_categories"),
                          confusion=options.get("confusion"),
                          category_prior=options.get("category_prior"))
    x, o = data.get("x"), data.get("o")
    if o is None:
        raise DataError("the categorical model needs observed categories data['o'] "
                        "(JSON field \"categories\": one 0-based int per observation)")
    if not torch.is_tensor(o) or o.dim() != 1:
        raise DataError(f"data['o'] must be a 1-d tensor of category indices, got "
                        f"{tuple(o.shape) if torch.is_tensor(o) else type(o).__name__}")
    if o.is_floating_point() or o.dtype == torch.bool:
        raise DataError(f"data['o'] must hold integer category indices, got dtype {o.dtype}")
    if x is not None and torch.is_tensor(x) and x.shape[0] != o.shape[0]:
        raise DataError(f"data['x'] has {x.shape[0]} observations but data['o'] has {o.shape[0]}; "
                        "give one category per observation")
    if o.numel():
        lo, hi = int(o.min()), int(o.max())
        if lo < 0 or hi >= C:
            bad = int(((o < 0) | (o >= C)).nonzero()[0])
            raise DataError(f"observed category out of range: data['o'][{bad}] = {int(o[bad])}, but "
                            f"categories are 0-based ints in 0..{C - 1} (C = {C})")
    if options.get("confusion") is not None:
        check_confusion(options["confusion"], C)
    prior = options.get("category_prior")
    if prior is not None:
        p = torch.as_tensor(prior, dtype=torch.float64)
        if (p < 0).any() or abs(float(p.sum()) - 1) > _ROW_TOL:
            raise DataError("category_prior must be C non-negative probabilities summing to 1")
    for key in ("confusion_concentration", "confusion_diag_concentration"):
        if options.get(key) is not None and float(options[key]) < 1.0:
            raise DataError(f"{key} must be >= 1 (the MAP confusion row needs a proper mode), "
                            f"got {options[key]}")
    return C


def confusion_concentration_matrix(C, confusion_concentration=None, confusion_diag_concentration=None,
                                   dtype=None) -> torch.Tensor:
    """``(C, C)`` Dirichlet concentrations of the rows of ``A``."""
    off = CONFUSION_CONCENTRATION if confusion_concentration is None else float(confusion_concentration)
    diag = (CONFUSION_DIAG_CONCENTRATION if confusion_diag_concentration is None
            else float(confusion_diag_concentration))
    conc = torch.full((C, C), off, dtype=dtype)
    conc.diagonal().fill_(diag)
    return conc


def default_confusion(C, diag=0.8, dtype=None) -> torch.Tensor:
    """``diag`` on the diagonal, the rest spread evenly over each row."""
    if not 0.0 < diag <= 1.0:
        raise DataError(f"confusion diagonal must be in (0, 1], got {diag}")
    if C == 1:
        return torch.ones(1, 1, dtype=dtype)
    a = torch.full((C, C), (1.0 - diag) / (C - 1), dtype=dtype)
    a.diagonal().fill_(diag)
    return a


# ---------------------------------------------------------------------------- the model
class ConfusionCategorical(dist.TorchDistribution):
    """``o ~ Categorical(A[c])`` with the confusion table ``A`` and the true category ``c``
    kept apart.

    Same distribution as ``dist.Categorical(A[c])``; its ``log_prob`` reads
    ``log A[c, o]`` by indexing the small ``(C, C)`` table, whereas torch's
    ``Categorical`` broadcasts the ``(..., C)`` rows against the observations
    first: under enumeration of ``c`` (batch ``(K, C, ..., C, N)``) that is a
    ``C``-times larger tensor and several times slower.
    """

    arg_constraints = {}
    has_enumerate_support = False

    def __init__(self, confusion, true_category, validate_args=None):
        self.confusion = confusion
        self.true_category = true_category
        super().__init__(true_category.shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.confusion.shape[-1] - 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ConfusionCategorical, _instance)
        new.confusion = self.confusion
        new.true_category = self.true_category.expand(batch_shape)
        super(ConfusionCategorical, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()):
        return dist.Categorical(self.confusion[self.true_category]).sample(sample_shape)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return torch.log(self.confusion)[self.true_category, value.long()]


def model(data, num_objects, *, num_categories=None, confusion=None, category_prior=None,
          weights=None, scale=None, num_obs=None,
          loc_prior_mean=0.0, loc_prior_scale=10.0, weight_concentration=1.0,
          scale_prior_shape=2.0, scale_prior_rate=1.0,
          confusion_concentration=None, confusion_diag_concentration=None):
    """The categorical model M2 (see the module docstring).

    Parameters
    ----------
    data : dict
        ``{"x": (N, 3) float tensor, "o": (N,) long tensor}``, optionally
        ``"num_categories"``; ``x`` and ``o`` may be ``None`` to simulate ``num_obs``.
    num_objects : int
        ``K``.
    """
    x = data.get("x")
    o = data.get("o")
    dtype = x.dtype if x is not None else torch.get_default_dtype()
    n = x.shape[0] if x is not None else (o.shape[0] if o is not None else int(num_obs))
    K = int(num_objects)
    C = num_categories_of(data, num_categories=num_categories, confusion=confusion,
                          category_prior=category_prior)
    if o is not None and o.numel() and (int(o.min()) < 0 or int(o.max()) >= C):
        raise DataError(f"observed category out of range: data['o'] holds values in "
                        f"{int(o.min())}..{int(o.max())} but categories are 0-based ints in 0..{C - 1} (C = {C})")

    locs, weights, scale = baseline.mixture_sites(K, dtype, weights, scale, loc_prior_mean, loc_prior_scale,
                                                  weight_concentration, scale_prior_shape, scale_prior_rate)
    if confusion is None:
        conc = confusion_concentration_matrix(C, confusion_concentration, confusion_diag_concentration, dtype)
        A = pyro.sample("confusion", dist.Dirichlet(conc).to_event(1))
    else:
        A = torch.as_tensor(confusion, dtype=dtype)
    rho = (torch.full((C,), 1.0 / C, dtype=dtype) if category_prior is None
           else torch.as_tensor(category_prior, dtype=dtype))

    # One site per object, outside the data plate: each gets its own enumeration dim.
    cats = [pyro.sample(category_site(k), dist.Categorical(rho), infer={"enumerate": "parallel"})
            for k in range(K)]
    cats = torch.stack(torch.broadcast_tensors(*cats), -1)  # (*enum_shape, K)

    with pyro.plate("data", n, dim=-1):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], scale).to_event(1), obs=x)
        cz = Vindex(cats)[..., z]  # category of the object that produced each detection
        pyro.sample("o", ConfusionCategorical(A, cz), obs=o)


# ---------------------------------------------------------------------------- closed forms
def category_scores(data, resp, confusion, category_prior=None):
    """``S[k, c] = sum_n g_nk log A[c, o_n] + log rho_c``: the part of Q that depends on ``c_k = c``.

    ``resp`` is the ``(N, K)`` posterior of ``z`` (responsibilities ``g``).
    Q splits over objects, so ``c_k = argmax_c S[k, c]`` maximises Q over all
    category vectors exactly.
    """
    o = data["o"]
    A = torch.as_tensor(confusion, dtype=resp.dtype)
    C = A.shape[0]
    log_a_o = torch.log(A).T[o]  # (N, C): log A[c, o_n]
    log_a_o = torch.nan_to_num(log_a_o, neginf=-1e30) if (A == 0).any() else log_a_o
    s = resp.T @ log_a_o  # (K, C)
    if category_prior is not None:
        s = s + torch.log(torch.as_tensor(category_prior, dtype=resp.dtype))
    else:
        s = s - math.log(C)
    return s


def category_mstep(data, resp, confusion, category_prior=None) -> torch.Tensor:
    """``c_k = argmax_c sum_n g_nk log A[c, o_n] + log rho_c`` (exact, closed form); ``(K,)`` long."""
    return category_scores(data, resp, confusion, category_prior).argmax(-1)


def confusion_counts(data, resp, cats, C) -> torch.Tensor:
    """Expected counts ``N[c, o] = sum_n sum_k g_nk [c_k = c] [o_n = o]`` for fixed categories."""
    o = data["o"]
    onehot_c = torch.nn.functional.one_hot(torch.as_tensor(cats), C).to(resp.dtype)  # (K, C)
    per_obs = resp @ onehot_c  # (N, C): posterior of the true category of each detection
    counts = torch.zeros(C, C, dtype=resp.dtype)
    counts.index_add_(1, o, per_obs.T)
    return counts


def confusion_from_counts(counts, old=None, confusion_concentration=None,
                          confusion_diag_concentration=None) -> torch.Tensor:
    """MAP row update ``A_c ∝ N_c + beta_c - 1`` (rows with nothing to normalise keep ``old``)."""
    C = counts.shape[0]
    conc = confusion_concentration_matrix(C, confusion_concentration, confusion_diag_concentration,
                                          counts.dtype)
    num = (counts + conc - 1.0).clamp_min(0.0)
    tot = num.sum(-1, keepdim=True)
    new = num / tot.clamp_min(torch.finfo(counts.dtype).tiny)
    if old is not None:
        empty = (tot.squeeze(-1) <= 0)
        if empty.any():
            new[empty] = torch.as_tensor(old, dtype=counts.dtype)[empty]
    return new


def gaussian_log_terms(data, params, options):
    """``(N, K)`` ``log pi_k + log N(x_n; mu_k, sigma^2 I)``."""
    x = data["x"]
    locs = params["locs"]
    w = params["weights"] if options.get("weights") is None else torch.as_tensor(options["weights"], dtype=x.dtype)
    s = params["scale"] if options.get("scale") is None else torch.as_tensor(options["scale"], dtype=x.dtype)
    d = x.shape[1]
    sq = ((x.unsqueeze(1) - locs.unsqueeze(0)) ** 2).sum(-1)
    return torch.log(w) - 0.5 * sq / s ** 2 - d * torch.log(s) - 0.5 * d * math.log(2 * math.pi)


def all_category_vectors(K, C):
    """All ``C^K`` category vectors, ``(C^K, K)`` long, in ``itertools.product`` order."""
    return torch.tensor(list(itertools.product(range(C), repeat=K)), dtype=torch.long).reshape(-1, K)


def category_vector_log_likelihoods(data, params, num_objects, *, chunk_entries=2 ** 24,
                                    with_counts=False, **options):
    """``log p(x, o | theta, c)`` (``z`` summed out) for every category vector ``c``.

    A direct, chunked torch computation (not the generic engine), used to score
    estimates, to find the jointly best ``c`` at given parameters, and for the
    exact expected confusion counts when ``c`` is enumerated.

    Returns
    -------
    configs : (C^K, K) long
    log_lik : (C^K,) ``log p(x, o | theta, c)``
    log_prior : (C^K,) ``log p(c)``
    counts : (C, C) expected confusion counts under ``p(c, z | x, o, theta)`` (``with_counts``)
    """
    x, o = data["x"], data["o"]
    K = int(num_objects)
    C = num_categories_of(data, num_categories=options.get("num_categories"),
                          confusion=options.get("confusion"),
                          category_prior=options.get("category_prior"))
    A = params["confusion"] if options.get("confusion") is None else torch.as_tensor(options["confusion"], dtype=x.dtype)
    rho = (torch.full((C,), 1.0 / C, dtype=x.dtype) if options.get("category_prior") is None
           else torch.as_tensor(options["category_prior"], dtype=x.dtype))
    base = gaussian_log_terms(data, params, options).T  # (K, N)
    log_a_o = torch.log(A)[:, o]  # (C, N)
    configs = all_category_vectors(K, C)
    n = x.shape[0]
    chunk = max(1, int(chunk_entries // max(1, K * n)))
    log_lik = torch.empty(configs.shape[0], dtype=x.dtype)
    for s in range(0, configs.shape[0], chunk):
        cfg = configs[s:s + chunk]
        terms = base.unsqueeze(0) + log_a_o[cfg]  # (B, K, N)
        log_lik[s:s + chunk] = torch.logsumexp(terms, 1).sum(-1)
    log_prior = torch.log(rho)[configs].sum(-1)
    if not with_counts:
        return configs, log_lik, log_prior
    post = torch.softmax(log_lik + log_prior, 0)
    per_obs = torch.zeros(C, n, dtype=x.dtype)  # p(true category of the source of n = c | data)
    for s in range(0, configs.shape[0], chunk):
        cfg = configs[s:s + chunk]
        terms = base.unsqueeze(0) + log_a_o[cfg]  # (B, K, N)
        r = torch.softmax(terms, 1) * post[s:s + chunk, None, None]  # p(c, z_n = k | data)
        onehot = torch.nn.functional.one_hot(cfg, C).to(x.dtype)  # (B, K, C)
        per_obs += torch.einsum("bkn,bkc->cn", r, onehot)
    counts = torch.zeros(C, C, dtype=x.dtype)
    counts.index_add_(1, o, per_obs)
    return configs, log_lik, log_prior, counts


def closed_form_mstep(data, marginals, params, num_objects, *, categories=None,
                      confusion=None, weights=None, scale=None,
                      confusion_concentration=None, confusion_diag_concentration=None, **options):
    """MAP M-step of M2 for the continuous sites.

    ``locs``, ``weights`` and ``scale`` are M1's updates (they need only the
    posterior of ``z``). The confusion matrix (when learned) gets its
    expected-count update ``A_c ∝ N_c + beta_c - 1``:

    * categories fixed (conditioned in; pass them as ``categories``, as
      :mod:`metagen_ppl.models.categorical.strategies` does): ``N[c, o] = sum_n sum_k g_nk [c_k = c][o_n = o]``;
    * categories enumerated (``"c_0"`` in ``marginals``): the counts need the
      joint posterior of ``(z_n, c_{z_n})``, which the engine does not hand to
      this hook, so they are recomputed exactly at ``params`` (the E-step's
      parameters) by :func:`category_vector_log_likelihoods` (cost of about one E-step);
    * otherwise ``confusion`` is left to the engine's optimiser M-step.
    """
    out = baseline.closed_form_mstep(data, marginals, params, num_objects, weights=weights, scale=scale,
                                     **{k: v for k, v in options.items() if k in baseline.DEFAULTS})
    if confusion is None and "confusion" in params:
        kw = dict(confusion_concentration=confusion_concentration,
                  confusion_diag_concentration=confusion_diag_concentration)
        C = params["confusion"].shape[0]
        if categories is not None:
            counts = confusion_counts(data, marginals["z"], categories, C)
            out["confusion"] = confusion_from_counts(counts, params["confusion"], **kw)
        elif category_site(0) in marginals:
            full = dict(params)
            full.setdefault("weights", weights)
            full.setdefault("scale", scale)
            *_, counts = category_vector_log_likelihoods(
                data, full, num_objects, with_counts=True, weights=weights, scale=scale,
                num_categories=C, category_prior=options.get("category_prior"))
            out["confusion"] = confusion_from_counts(counts, params["confusion"], **kw)
    return out


def discrete_update(data, estep, params, num_objects, *, iteration, confusion=None, category_prior=None,
                    confusion_concentration=None, confusion_diag_concentration=None, **options):
    """EM's discrete M-step of M2, when the categories ``c_k`` are discrete parameters.

    (``fit_em(..., discrete=["c_0", ..., "c_{K-1}"])``, the ``mstep`` strategy.) Q splits over
    objects, so ``c_k = argmax_c sum_n g_nk log A[c, o_n] + log rho_c`` is exact; a learned
    ``A`` then gets its expected-count update at the new categories,
    ``A_c ∝ sum_n sum_k g_nk [c_k = c] [o_n = .] + beta_c - 1``.

    At the start of a run (``estep=None``) the categories come from the same argmax with the
    responsibilities of the Gaussian part alone, at the starting locations.

    Returns ``({"c_k": ..., "confusion": A}, changed)``; ``changed``: a category moved.
    """
    K = int(num_objects)
    fixed = dict(options, confusion=confusion)
    A = params["confusion"] if confusion is None else torch.as_tensor(confusion, dtype=data["x"].dtype)
    if estep is None:
        full = dict(params, confusion=A)
        resp = torch.softmax(gaussian_log_terms(data, full, fixed), -1)
    else:
        resp = estep.marginals["z"]
    cats = category_mstep(data, resp, A, category_prior)
    out = {category_site(k): cats[k] for k in range(K)}
    if estep is not None and confusion is None:
        counts = confusion_counts(data, resp, cats, A.shape[0])
        out["confusion"] = confusion_from_counts(counts, params["confusion"], confusion_concentration,
                                                 confusion_diag_concentration)
    old = [params.get(category_site(k)) for k in range(K)]
    changed = any(c is None or int(c) != int(cats[k]) for k, c in enumerate(old))
    return out, changed


# ---------------------------------------------------------------------------- init / simulate / IO
def initialize(data, num_objects, generator, *, weights=None, scale=None, confusion=None,
               num_categories=None, category_prior=None, confusion_concentration=None,
               confusion_diag_concentration=None, **_):
    """k-means++ locations (as in M1); the confusion prior's mode when ``A`` is learned."""
    out = baseline.initialize(data, num_objects, generator, weights=weights, scale=scale)
    if confusion is None:
        C = num_categories_of(data, num_categories=num_categories, category_prior=category_prior)
        conc = confusion_concentration_matrix(C, confusion_concentration, confusion_diag_concentration,
                                              data["x"].dtype)
        out["confusion"] = (conc - 1.0) / (conc - 1.0).sum(-1, keepdim=True)
    return out


def simulate(num_objects, num_obs, seed, *, num_categories=5, confusion_diag=0.8, confusion=None,
             scale=1.0, weights=None, cats=None, **options):
    """Draw a world and ``num_obs`` detections from :func:`model` itself.

    ``confusion`` defaults to :func:`default_confusion` (``confusion_diag`` on
    the diagonal, the rest spread evenly); ``scale`` (default 1) and optionally
    ``weights`` and ``cats`` (the object categories) are fixed; everything else
    (locations, weights, categories) is drawn from the prior. Returns the JSON
    exchange format with ``"categories"`` (0-based) and ``"truth"``.
    """
    if isinstance(num_categories, bool) or not isinstance(num_categories, int) or num_categories < 1:
        raise DataError(f"num_categories must be an integer >= 1, got {num_categories!r}")
    C = int(num_categories)
    A = (default_confusion(C, confusion_diag) if confusion is None
         else check_confusion(confusion, C, torch.get_default_dtype()))
    fixed = {"scale": torch.as_tensor(float(scale))}
    if weights is not None:
        fixed["weights"] = torch.as_tensor(weights, dtype=torch.get_default_dtype())
    if cats is not None:
        cats = torch.as_tensor(cats, dtype=torch.long)
        if cats.shape != (num_objects,) or (cats < 0).any() or (cats >= C).any():
            raise DataError(f"cats must be {num_objects} ints in 0..{C - 1}, got {cats.tolist()}")
        fixed.update({category_site(k): cats[k] for k in range(num_objects)})
    with seeded(seed):
        tr = pyro.poutine.trace(pyro.poutine.condition(model, data=fixed)).get_trace(
            {"x": None, "o": None}, num_objects, num_obs=num_obs, num_categories=C, confusion=A, **options)
    return {
        "model": "categorical",
        "num_objects": int(num_objects),
        "num_categories": C,
        "observations": tr.nodes["x"]["value"].tolist(),
        "categories": tr.nodes["o"]["value"].tolist(),
        "truth": {
            "locs": tr.nodes["locs"]["value"].tolist(),
            "cats": [int(tr.nodes[category_site(k)]["value"]) for k in range(num_objects)],
            "weights": tr.nodes["weights"]["value"].tolist(),
            "scale": float(tr.nodes["scale"]["value"]),
            "confusion": A.tolist(),
            "z": tr.nodes["z"]["value"].tolist(),
        },
    }


def data_from_json(obj, dtype=torch.float64) -> dict:
    """``{"x", "o", "num_categories"}`` tensors from the JSON exchange format.

    ``"num_categories"`` (a 0-d long tensor) is present when the file gives it.
    """
    if not isinstance(obj, dict) or "observations" not in obj:
        raise DataError("a categorical data file needs \"observations\": [[x, y, z], ...] and "
                        "\"categories\": [int, ...]")
    if "categories" not in obj:
        raise DataError("the categorical model needs \"categories\" in the data file: one 0-based "
                        "observed category per observation")

    obs = check_observations(obj["observations"], None, 3)       # names the bad row and column
    check_categories(obj["categories"], len(obs), None)
    for key in ("num_categories", "num_objects"):
        v = obj.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DataError(f"{key!r} must be an integer >= 1, got {v!r:.40}")
    try:
        x = torch.tensor(obs, dtype=dtype)
        o = torch.tensor(obj["categories"], dtype=torch.long)
    except (TypeError, ValueError) as e:
        raise DataError(f"malformed observations or categories: {e}") from e
    if o.is_floating_point():
        if not torch.equal(o, o.round()):
            raise DataError("\"categories\" must be integers (0-based category indices)")
        o = o.long()
    data = {"x": x, "o": o.long() if o.numel() else o.long()}
    if obj.get("num_categories") is not None:
        data["num_categories"] = torch.tensor(int(obj["num_categories"]))
    if x.dim() != 2 or x.shape[0] != o.shape[0]:
        raise DataError(f"\"observations\" ({tuple(x.shape)}) and \"categories\" ({tuple(o.shape)}) "
                        "must have one entry per observation")
    check_categorical_data(data, int(obj.get("num_objects", 1)))
    return data


def truth_from_json(obj, dtype=torch.float64) -> dict:
    """The ``"truth"`` block of a simulated file as tensors."""
    t = obj["truth"]
    return {"locs": torch.tensor(t["locs"], dtype=dtype), "cats": torch.tensor(t["cats"], dtype=torch.long),
            "weights": torch.tensor(t["weights"], dtype=dtype), "scale": float(t["scale"]),
            "confusion": torch.tensor(t["confusion"], dtype=dtype)}


# --------------------------------------------------------------------------- metagen-ppl compare
#: EM category strategies that ``metagen-ppl compare`` runs for this model.
CATEGORY_STRATEGIES = ("mstep", "enumerate", "sample")
#: ``metagen-ppl compare`` simulates ``simulate(3 objects, 150 observations, seed)`` by default
#: (NUTS sums over all C^K = 125 category vectors at every step, so its chains are kept short).
COMPARE_SIMULATION = {"args": (3, 150)}
COMPARE_BUDGET = {"mcmc_samples": 100, "mcmc_warmup": 100, "mcmc_max_tree_depth": 6}
