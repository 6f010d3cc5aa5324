"""The objects of a model, read from its trace: per-object sites, the location site, the observed site.

A mixture's objects (its components) appear in three places of a model: the
enumerated assignment site (``z``: one value per object, perhaps more values
for other components, e.g. a clutter component), the continuous unknowns with
one entry per object (``locs`` (K, D), per-object scales (K,), ``weights`` (K,),
or (K + 1,) with a clutter weight, per-scene locations (S, K, D), ...), and the
observed site the locations explain. Label alignment of MCMC draws, the
data-driven start, the re-seeding of empty components and the checks of the
data all need them. A model may declare them (``COMPONENT_SITES = {site: dim}``,
``LOCATION_SITE``; see :mod:`metagen_ppl.engine.registry`); otherwise
:func:`component_structure` infers them from the model's trace:

1. *candidates*: every continuous unknown with a dimension of size ``K`` or ``K + 1``;
2. *probe*: entry ``i`` along that dimension is moved (in the site's unconstrained
   space; a simplex entry is scaled and the simplex renormalised) and the model
   traced again under enumeration. Entry ``i`` is *tied* to value ``a`` of an
   enumerated site when the log factors, summed per value of that site, change
   at ``a`` only (up to a change common to all values, as a renormalised weight
   vector gives). A dimension whose entries tie one-to-one to values is an
   object dimension;
3. *the location site*: the declared one, else a real-valued tied site of shape
   ``(..., K, D)`` whose probe changes an observed site with ``D`` coordinates
   (that observed site is the one the locations *explain*). The dimensions
   before its object dimension are batch (e.g. per-scene) dimensions: labels
   are aligned per batch element unless a per-object site without them ties the
   objects of every batch element together.

:func:`data_start` (the generic start of :func:`~metagen_ppl.engine.setup.initial_values`),
:func:`default_reseed` (EM's re-seeding of an empty component for models without
a ``reseed_empty`` hook) and :func:`empty_components` build on the result.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import weakref
from typing import Callable, Optional

import torch
from pyro import poutine
from pyro.distributions import constraints
from torch.distributions import biject_to

from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.init import kmeans_plusplus
from metagen_ppl.engine.registry import ModelSpec
from metagen_ppl.errors import DataError, MetagenError, ModelError
from metagen_ppl.util import seeded

#: Seed of the prior draw whose values the probes move (a fixed draw: the structure is deterministic).
PROBE_SEED = 20240611


@dataclasses.dataclass
class Components:
    """The per-object structure of a model bound to its data (see the module docstring).

    Attributes
    ----------
    num_objects : int
        ``K``.
    assignment_site : str or None
        The enumerated site whose values include the objects.
    support : int
        Its number of values (``K``, or more with e.g. a clutter component).
    object_values : LongTensor (L,) or None
        The assignment site's value of location entry ``j``.
    sites : dict name -> int
        Per-object sites and their object dimension (within one value); the location site included.
    entries : dict name -> LongTensor (L,)
        The entry of each site (along its object dimension) that belongs to location entry ``j``
        (``arange(L)`` for a site indexed like the locations; ``1 + arange(K)`` for a weight vector
        whose entry 0 is a clutter component's).
    location_site : str or None
    observed_site : str or None
        The observed site the locations explain (else the model's first observed site in a plate).
    shapes : dict name -> torch.Size
        Shapes of the per-object sites.
    batch_shape : tuple
        Dimensions of the location site before its object dimension (e.g. ``(S,)`` scenes).
    align_batch : bool
        Labels are aligned per batch element (every per-object site has the batch dimensions).
    declared : bool
        The model declares ``COMPONENT_SITES`` (and it fits the model).
    problem : str or None
        Why labels cannot be aligned (with what to declare); ``None`` when they can or nothing is to align.
    note : str or None
        Something a user should know (e.g. a declaration that did not fit and what was used instead).
    observation_plates : tuple of (name, size)
        The plates of the observed site, outermost first.
    observed_value : tensor or None
        The observed site's data.
    """

    num_objects: int
    assignment_site: Optional[str] = None
    support: int = 0
    object_values: Optional[torch.Tensor] = None
    sites: dict = dataclasses.field(default_factory=dict)
    entries: dict = dataclasses.field(default_factory=dict)
    location_site: Optional[str] = None
    observed_site: Optional[str] = None
    shapes: dict = dataclasses.field(default_factory=dict)
    batch_shape: tuple = ()
    align_batch: bool = False
    declared: bool = False
    problem: Optional[str] = None
    note: Optional[str] = None
    observation_plates: tuple = ()
    observed_value: Optional[torch.Tensor] = dataclasses.field(default=None, repr=False)

    @property
    def num_observations(self) -> Optional[int]:
        """Number of observations: the product of the observed site's plate sizes (``None``: no such site)."""
        if not self.observation_plates:
            return None
        return math.prod(size for _, size in self.observation_plates)

    def describe_observations(self) -> str:
        """``"150"``, or ``"150 (scenes 3 x data 50)"`` for nested plates."""
        n = self.num_observations
        if n is None:
            return "?"
        if len(self.observation_plates) == 1:
            return str(n)
        return f"{n} ({' x '.join(f'{name} {size}' for name, size in self.observation_plates)})"

    @property
    def alignable(self) -> bool:
        return self.location_site is not None and bool(self.sites) and self.problem is None

    def alignment(self) -> Optional[dict]:
        """Keyword arguments of :func:`metagen_ppl.engine.align.align_samples` (``None``: nothing to align)."""
        if not self.alignable:
            return None
        return dict(component_sites=dict(self.sites), location_site=self.location_site,
                    entries=dict(self.entries), batch_dims=len(self.batch_shape) if self.align_batch else 0)

    def declaration(self) -> str:
        """The module attributes that declare this structure (for messages)."""
        sites = ", ".join(f"{n!r}: {d}" for n, d in self.sites.items())
        loc = f"; LOCATION_SITE = {self.location_site!r}" if self.location_site else ""
        return f"COMPONENT_SITES = {{{sites}}}{loc}"

    def describe(self) -> dict:
        """A JSON-able summary (for ``FitResult.info``)."""
        out = {"assignment_site": self.assignment_site, "location_site": self.location_site,
               "component_sites": dict(self.sites), "batch_shape": list(self.batch_shape),
               "aligned_per_batch": self.align_batch, "declared": self.declared,
               "problem": self.problem, "note": self.note}
        return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- discovery
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def component_structure(spec: ModelSpec, em: EnumeratedModel) -> Components:
    """The per-object structure of ``em`` (declared by ``spec`` or inferred from the trace); cached per ``em``.

    Raises
    ------
    DataError
        If the observed site's plates hold no observation, or fewer than ``K`` (models with a location site).
    """
    hit = _CACHE.get(em)
    if hit is not None and hit[0] is spec:
        return hit[1]
    comps = _structure(spec, em)
    _CACHE[em] = (spec, comps)
    return comps


def model_components(spec: ModelSpec, data: dict, num_objects: int, options: Optional[dict] = None) -> Components:
    """:func:`component_structure` of ``spec`` bound to ``data`` (for applications: the printed N, truth keys)."""
    em = EnumeratedModel(spec.model, data, int(num_objects), dict(spec.default_options, **(options or {})))
    return component_structure(spec, em)


def _declares_none(spec: ModelSpec) -> bool:
    """``COMPONENT_SITES = {}`` or ``LOCATION_SITE = None``: the model says it has no objects to align."""
    return (bool(getattr(spec, "component_sites_declared", False)) and not spec.component_sites) or \
        (bool(getattr(spec, "location_site_declared", False)) and spec.location_site is None)


def _structure(spec: ModelSpec, em: EnumeratedModel) -> Components:
    K = int(em.num_objects)
    comps = Components(num_objects=K)
    if _declares_none(spec):  # "no label switching to undo" (e.g. slots anchored by fixed categories)
        comps.declared = True
        return comps
    try:
        with torch.no_grad(), seeded(PROBE_SEED):
            tr = poutine.trace(em.raw_model).get_trace(em.data, K, **em.options)
    except MetagenError:
        raise
    except Exception as e:  # the model ran when it was bound; a draw it cannot run leaves the structure unknown
        comps.problem = (f"the model failed on a prior draw ({type(e).__name__}: {e}); declare COMPONENT_SITES and "
                         "LOCATION_SITE")
        return comps
    values = {n: tr.nodes[n]["value"].detach() for n in list(em.latents) + list(em.discrete)}
    observed = {n: tr.nodes[n] for n in em.observed_sites}
    _set_observed(comps, observed, em.data_site)
    declared = dict(spec.component_sites) if getattr(spec, "component_sites_declared", bool(spec.component_sites)) \
        else None
    loc_declared = getattr(spec, "location_site_declared", False)
    wanted_loc = spec.location_site if (loc_declared or spec.location_site in values) else None
    supports = {}
    for e in em.enum_sites:
        try:
            supports[e] = int(tr.nodes[e]["fn"].enumerate_support(expand=False).shape[0])
        except (NotImplementedError, RuntimeError, KeyError, IndexError):
            pass
    prober = _Prober(em, values, observed, supports)
    if declared:
        ok = _use_declared(comps, declared, wanted_loc, values, prober, em)
        if not ok:
            reason = comps.problem
            inferred = Components(num_objects=K)
            _infer(inferred, values, prober, em, wanted_loc if wanted_loc in values else None)
            _finish(inferred, observed, em)
            if inferred.alignable:
                inferred.note = (f"the model's {reason}; labels are aligned by the per-object sites read from the "
                                 f"model's trace instead ({inferred.declaration()}): declare that")
                comps = inferred
            else:
                comps.problem = f"{reason}; fix the declaration (e.g. {_example(values, K)})"
    elif loc_declared and wanted_loc not in values:
        comps.problem = (f"LOCATION_SITE is {wanted_loc!r}, which is not a continuous unknown of the model (its "
                         f"unknowns: {sorted(em.latents)}); name the site of the (..., K, D) locations")
    else:
        _infer(comps, values, prober, em, wanted_loc)
    _finish(comps, observed, em)
    _check_counts(comps)
    return comps


def _example(values: dict, K: int) -> str:
    for name, v in values.items():
        dims = [d for d in range(v.dim()) if v.shape[d] == K]
        if dims:
            return f"COMPONENT_SITES = {{{name!r}: {dims[0]}}}"
    return "COMPONENT_SITES = {'locs': 0}"


def _set_observed(comps: Components, observed: dict, data_site: Optional[str], name: Optional[str] = None) -> None:
    name = name if name in observed else data_site
    if name is None or name not in observed:
        return
    site = observed[name]
    frames = sorted((f for f in site["cond_indep_stack"] if f.vectorized), key=lambda f: f.dim)
    comps.observed_site = name
    comps.observation_plates = tuple((f.name, int(f.size)) for f in frames)
    v = site["value"]
    comps.observed_value = v if torch.is_tensor(v) else None


def _check_counts(comps: Components) -> None:
    n = comps.num_observations
    if n is None or comps.location_site is None:
        return
    where = f"site {comps.observed_site!r} (plates {comps.describe_observations()})"
    if n == 0:
        raise DataError(f"the data hold no observations: {where} is empty; a scene needs at least one detection")
    if comps.num_objects > n:
        raise DataError(f"num_objects = {comps.num_objects} exceeds the number of observations N = {n} of {where}; "
                        "use K <= N")


class _Prober:
    """Moves one entry of one site and reports, per enumerated site, which of its values the log factors change at."""

    def __init__(self, em: EnumeratedModel, values: dict, observed: dict, supports: dict):
        self.em, self.values, self.observed = em, values, observed
        self.supports = supports  # {enum site: number of values}, from the plain trace
        self._base = None
        self.changed_observed: dict = {}

    @property
    def base(self) -> dict:
        """``{enum site: (support, {site: log factor summed per value})}`` at the unmoved values."""
        if self._base is None:
            try:
                self._base = self._profile(self.values)
            except MetagenError:
                self._base = {}
        return self._base

    def _profile(self, values):
        tr = self.em.trace(values, pack=False)
        out = {}
        for e in self.em.enum_sites:
            node = tr.nodes[e]
            d = node["infer"].get("_enumerate_dim")
            v = node["value"]
            if d is None or v.dim() < -d or v.shape[d] < 2:
                continue
            size = int(v.shape[d])
            per = {}
            for name, site in tr.nodes.items():
                if site["type"] != "sample":
                    continue
                lp = site["log_prob"]
                if lp.dim() < -d or lp.shape[d] != size:
                    continue
                lp = torch.where(torch.isfinite(lp), lp, torch.zeros_like(lp)).double()
                per[name] = lp.movedim(d, 0).reshape(size, -1).sum(1)
            out[e] = (size, per)
        return out

    def tied(self, name: str, dim: int, index: int) -> Optional[dict]:
        """``{enum site: value}`` tied to entry ``index`` of ``name`` along ``dim`` (``None``: cannot probe)."""
        moved = _moved(self.values[name], self.em.latents[name].constraint, dim, index)
        if moved is None:
            return None
        value, renormalised = moved
        try:
            prof = self._profile(dict(self.values, **{name: value}))
        except MetagenError:
            return None
        out = {}
        for e, (size, per) in self.base.items():
            if e not in prof:
                continue
            new = prof[e][1]
            keys = set(per) | set(new)
            zero = torch.zeros(size, dtype=torch.float64)
            diff = sum((new.get(k, zero) - per.get(k, zero) for k in keys), zero)
            a = _changed_value(diff, clean_only=size == 2 and not renormalised)
            if a is not None:
                out[e] = a
                self.changed_observed[(name, dim, index, e)] = [
                    k for k in keys if k in self.em.observed_sites
                    and float((new.get(k, zero) - per.get(k, zero)).abs().max()) > 0]
        return out


def _moved(value: torch.Tensor, constraint, dim: int, index: int):
    """``(value with entry index along dim moved, renormalised)``; ``None`` if the site cannot be probed."""
    if not value.is_floating_point():
        return None
    c = constraint
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    v = value.detach().clone()
    if isinstance(c, type(constraints.simplex)):
        if dim == v.dim() - 1:
            v.select(dim, index).mul_(1.5)
            return v / v.sum(-1, keepdim=True), True
        row = v.select(dim, index)
        row.copy_(0.5 * row + 0.5 * row.roll(1, -1))
        return v, True
    try:
        t = biject_to(c)
    except NotImplementedError:
        return None
    if t.domain.event_dim != 0:
        return None
    u = t.inv(v)
    if not bool(torch.isfinite(u).all()):
        return None
    u.select(dim, index).add_(0.5 * float(u.abs().max()) + 0.5)
    out = t(u)
    return (out, False) if bool(torch.isfinite(out).all()) else None


def _changed_value(diff: torch.Tensor, clean_only: bool) -> Optional[int]:
    """The one value at which ``diff`` differs (from zero, or from a change common to the others)."""
    if not bool(torch.isfinite(diff).all()):
        return None
    big = float(diff.abs().max())
    if big == 0.0:
        return None
    tol = 1e-4 * big
    nonzero = (diff.abs() > tol).nonzero().flatten().tolist()
    if len(nonzero) == 1:
        return nonzero[0]
    if clean_only:
        return None
    size = diff.numel()
    if size == 2:
        return int(diff.argmax()) if abs(float(diff[0] - diff[1])) > tol else None
    j = int((diff - diff.median()).abs().argmax())
    others = torch.cat([diff[:j], diff[j + 1:]])
    if float(others.max() - others.min()) <= tol and abs(float(diff[j] - others.mean())) > tol:
        return j
    return None


def _tie_dim(prober: _Prober, name: str, dim: int, enum_site: Optional[str] = None) -> dict:
    """``{enum site: LongTensor of the value each entry along dim is tied to}`` for the enum sites the whole
    dimension ties to one-to-one."""
    size = prober.values[name].shape[dim]
    maps = None
    for i in range(size):
        t = prober.tied(name, dim, i)
        if not t:
            return {}
        if enum_site is not None:
            t = {e: a for e, a in t.items() if e == enum_site}
        maps = {e: [a] for e, a in t.items()} if maps is None else \
            {e: m + [t[e]] for e, m in maps.items() if e in t}
        if not maps:
            return {}
    return {e: torch.tensor(m) for e, m in (maps or {}).items() if len(set(m)) == len(m)}


def _is_real(constraint) -> bool:
    c = constraint
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c is constraints.real or isinstance(c, type(constraints.real))


def _infer(comps: Components, values: dict, prober: _Prober, em: EnumeratedModel, wanted_loc: Optional[str]) -> None:
    K = comps.num_objects
    if K < 2:
        if wanted_loc in values and values[wanted_loc].dim() >= 2:
            v = values[wanted_loc]
            comps.location_site = wanted_loc
            comps.sites = {wanted_loc: v.dim() - 2}
            comps.entries = {wanted_loc: torch.arange(v.shape[-2])}
        return
    ties = {}  # name -> (dim, {enum: map})
    for name, v in values.items():
        if name not in em.latents:
            continue
        for dim in range(v.dim()):
            if v.shape[dim] not in (K, K + 1):
                continue
            maps = _tie_dim(prober, name, dim)
            if maps:
                ties[name] = (dim, maps)
                break
    if not ties:
        comps.problem = (f"no unknown of the model has a dimension of size K = {K} whose entries the assignment "
                         "site selects, so the per-object sites are unknown; declare COMPONENT_SITES = {site: dim} "
                         "and LOCATION_SITE = 'site of the (K, D) locations' in the model file")
        return
    loc = wanted_loc if wanted_loc in ties else None
    if loc is None:
        for name, (dim, maps) in ties.items():
            v = values[name]
            if _is_real(em.latents[name].constraint) and v.dim() >= 2 and dim == v.dim() - 2 and v.shape[dim] == K \
                    and _explains(prober, name, dim, next(iter(maps)), v.shape[-1]):
                loc = name
                break
    if loc is None:
        comps.problem = (f"the per-object sites {sorted(ties)} include no location site (a real-valued site of shape "
                         f"(..., K, D) that an observed site of D coordinates depends on); declare LOCATION_SITE = "
                         "'name' (and COMPONENT_SITES) in the model file")
        return
    dim, maps = ties[loc]
    assign = next(iter(maps))
    sites = {n: (d, m[assign]) for n, (d, m) in ties.items() if assign in m}
    _assemble(comps, values, em, loc, assign, sites, prober)


def _explains(prober: _Prober, name: str, dim: int, assign: str, width: int) -> bool:
    """Whether moving entry 0 of ``name`` changed an observed site with ``width`` coordinates."""
    changed = prober.changed_observed.get((name, dim, 0, assign), [])
    return any(_obs_width(prober, o) == width for o in changed)


def _obs_width(prober: _Prober, name: str) -> Optional[int]:
    node = prober.observed.get(name)
    v = None if node is None else node["value"]
    return int(v.shape[-1]) if torch.is_tensor(v) and v.dim() >= 1 else None


def _assemble(comps: Components, values: dict, em: EnumeratedModel, loc: str, assign: str, sites: dict,
              prober: _Prober) -> None:
    """Fill ``comps`` from ``{name: (dim, value map)}`` (value map: the assignment value of each entry)."""
    ldim, lmap = sites[loc]
    comps.location_site, comps.assignment_site = loc, assign
    comps.support = int(prober.supports.get(assign, 0))
    comps.object_values = lmap
    comps.batch_shape = tuple(values[loc].shape[:ldim])
    comps.sites, comps.entries, comps.shapes = {}, {}, {}
    lost = []
    for name, (dim, m) in sites.items():
        pos = {int(a): i for i, a in enumerate(m.tolist())}
        if not all(int(a) in pos for a in lmap.tolist()):
            lost.append(name)
            continue
        comps.sites[name] = dim
        comps.entries[name] = torch.tensor([pos[int(a)] for a in lmap.tolist()])
        comps.shapes[name] = values[name].shape
    B = comps.batch_shape
    per_batch = all(comps.shapes[n][:len(B)] == B and d >= len(B) for n, d in comps.sites.items())
    comps.align_batch = bool(B) and per_batch
    if lost:
        comps.note = (f"site(s) {lost} hold entries for values of {assign!r} that are not the location site's "
                      "objects; they are not permuted with the objects")
    first = [o for o in prober.changed_observed.get((loc, ldim, 0, assign), [])
             if _obs_width(prober, o) == values[loc].shape[-1]]
    if first:
        comps.observed_site = em.data_site if em.data_site in first else first[0]


def _use_declared(comps: Components, declared: dict, wanted_loc: Optional[str], values: dict, prober: _Prober,
                  em: EnumeratedModel) -> bool:
    """Use the model's ``COMPONENT_SITES``; ``False`` (with ``comps.problem``) where they do not fit the model."""
    K = comps.num_objects
    dims = {}
    for name, dim in declared.items():
        if name not in values or name not in em.latents:
            comps.problem = (f"COMPONENT_SITES names {name!r}, which is not a continuous unknown of the model "
                             f"(its unknowns: {sorted(em.latents)})")
            return False
        v = values[name]
        if not isinstance(dim, int) or not -v.dim() <= dim < v.dim():
            comps.problem = f"COMPONENT_SITES gives site {name!r} dim {dim!r}, but it has shape {tuple(v.shape)}"
            return False
        dims[name] = dim % v.dim()
    loc = wanted_loc if wanted_loc in dims else None
    if loc is None:
        if wanted_loc is not None and wanted_loc not in values:
            comps.problem = f"LOCATION_SITE is {wanted_loc!r}, which is not a continuous unknown of the model"
            return False
        comps.problem = (f"LOCATION_SITE ({wanted_loc!r}) is not one of COMPONENT_SITES {sorted(dims)}; "
                         "the labels are matched on the locations")
        return False
    enum_k = [e for e, size in prober.supports.items() if size == K] if K >= 2 else []
    if K < 2:
        comps.location_site, comps.sites, comps.declared = loc, dims, True
        comps.entries = {n: torch.arange(values[n].shape[d]) for n, d in dims.items()}
        comps.shapes = {n: values[n].shape for n in dims}
        comps.batch_shape = tuple(values[loc].shape[:dims[loc]])
        return True
    if len(enum_k) == 1 and all(values[n].shape[d] == K for n, d in dims.items()):
        sites = {n: (d, torch.arange(K)) for n, d in dims.items()}
        _assemble(comps, values, em, loc, enum_k[0], sites, prober)
        comps.declared = True
        return _batch_ok(comps)
    maps = {}
    for name, d in dims.items():
        m = _tie_dim(prober, name, d)
        if not m:
            v = values[name]
            comps.problem = (f"COMPONENT_SITES says site {name!r} is indexed by object along dim {d}, but it has "
                             f"shape {tuple(v.shape)} (size {v.shape[d]} there, K = {K}) and its entries there do "
                             "not each select one value of the assignment site")
            return False
        maps[name] = m
    assign = next((e for e in maps[loc] if all(e in m for m in maps.values())), None)
    if assign is None:
        comps.problem = "the sites of COMPONENT_SITES are not tied to one assignment site"
        return False
    _assemble(comps, values, em, loc, assign, {n: (dims[n], maps[n][assign]) for n in dims}, prober)
    comps.declared = True
    return _batch_ok(comps)


def _batch_ok(comps: Components) -> bool:
    B = comps.batch_shape
    if not B or comps.align_batch:
        return True
    bad = [n for n, d in comps.sites.items() if d >= len(B) and comps.shapes[n][:len(B)] != B]
    if bad:
        comps.problem = (f"the location site {comps.location_site!r} has per-batch dimensions {B} before its object "
                         f"dimension, but site(s) {bad} have others")
        return False
    return True


def _finish(comps: Components, observed: dict, em: EnumeratedModel) -> None:
    """The observed site's plates and data (the one the locations explain, else the model's first in a plate)."""
    _set_observed(comps, observed, em.data_site, comps.observed_site)


# --------------------------------------------------------------------------- uses
def observation_rows(comps: Components, batch_shape: tuple) -> Optional[torch.Tensor]:
    """The observations as rows ``(*batch_shape, n, D)`` (``None`` if their layout does not allow it)."""
    x = comps.observed_value
    if x is None or not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 1:
        return None
    D = x.shape[-1]
    if batch_shape:
        if x.dim() - 1 < len(batch_shape) or tuple(x.shape[:len(batch_shape)]) != tuple(batch_shape):
            return None
        return x.reshape(*batch_shape, -1, D)
    return x.reshape(-1, D)


def data_start(spec: ModelSpec, em: EnumeratedModel, values: dict, generator: torch.Generator) -> dict:
    """The generic data-driven start (models without an ``initialize`` hook).

    The location site starts at k-means++ seeds (:func:`~metagen_ppl.engine.init.kmeans_plusplus`) of the
    observations it explains, drawn per batch element (scene) for per-scene locations; per-object simplex
    sites (weights) start uniform. Other unknowns keep ``values`` (a prior draw). ``{}`` when the model has
    no location site the structure search found.
    """
    comps = component_structure(spec, em)
    loc = comps.location_site
    if loc is None or loc not in values:
        return {}
    v = values[loc]
    dim = comps.sites.get(loc)
    if dim is None or dim != v.dim() - 2:
        return {}
    B = tuple(v.shape[:dim])
    rows = observation_rows(comps, B)
    if rows is None or rows.shape[-1] != v.shape[-1] or rows.shape[-2] == 0:
        return {}
    new = v.clone()
    L = v.shape[dim]
    entries = comps.entries[loc]
    for b in itertools.product(*(range(s) for s in B)):
        seeds, _ = kmeans_plusplus(rows[b].to(v.dtype), L, generator)
        new[b + (entries,)] = seeds
    c = em.latents[loc].constraint
    try:
        if not bool(c.check(new).all()):
            return {}
    except (NotImplementedError, RuntimeError):
        pass
    out = {loc: new}
    for name, d in comps.sites.items():
        if name == loc or name not in values or name not in em.latents:
            continue
        w = values[name]
        if isinstance(_base(em.latents[name].constraint), type(constraints.simplex)) and d == w.dim() - 1:
            out[name] = torch.full_like(w, 1.0 / w.shape[-1])
    return out


def _base(c):
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c


def object_counts(comps: Components, marginals: dict):
    """``(counts (*B, L), n)``: expected observations of each object (per batch element when the labels are
    per batch) and the observations they share; ``None`` where the assignment posterior does not allow it."""
    if comps.assignment_site is None or comps.object_values is None:
        return None
    g = marginals.get(comps.assignment_site)
    if not torch.is_tensor(g) or g.dim() < 1 or g.shape[-1] != comps.support:
        return None
    g = g.index_select(-1, comps.object_values.to(g.device))
    B = comps.batch_shape if comps.align_batch else ()
    if B:
        if g.dim() - 1 < len(B) or tuple(g.shape[:len(B)]) != tuple(B):
            return None
        rest = tuple(range(len(B), g.dim() - 1))
        counts = g.sum(rest) if rest else g
        n = math.prod(g.shape[len(B):-1])
    else:
        counts = g.reshape(-1, g.shape[-1]).sum(0)
        n = math.prod(g.shape[:-1])
    return counts, n


def empty_components(comps: Components, marginals: dict, threshold: float = 1e-8) -> list:
    """Objects with no observation: ``[(batch index tuple, object)]`` whose expected count is ``<= threshold * n``."""
    got = object_counts(comps, marginals)
    if got is None:
        return []
    counts, n = got
    empty = (counts <= threshold * n).nonzero().tolist()
    return [(tuple(e[:-1]), int(e[-1])) for e in empty]


def empty_message(comps: Components, empty: list) -> str:
    """A sentence naming the empty objects of :func:`empty_components`."""
    K = comps.num_objects
    if comps.align_batch and comps.batch_shape:
        names = ", ".join(f"{k} (batch {list(b)})" for b, k in empty[:10])
    else:
        names = ", ".join(str(k) for _, k in empty[:10])
    more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
    return (f"{len(empty)} component(s) have no observations at the end (expected count ~ 0): object(s) {names}{more} "
            f"of {comps.location_site!r}; the fit uses fewer than K = {K} objects there")


def default_reseed(spec: ModelSpec, em: EnumeratedModel) -> Callable:
    """EM's ``reseed_empty`` for a model without that hook (same signature; see :mod:`metagen_ppl.engine.em`).

    The first empty object not in ``skip`` (a flat index ``batch * L + object`` for per-scene objects) moves
    onto the observation of its batch element the model explains worst (lowest pointwise log likelihood,
    else the farthest from every location); its per-object simplex entries (weights) start small (the best
    of a few values by the log joint) and its other per-object entries at the median of the other objects'.
    """

    def reseed(data, marginals, params, num_objects, *, threshold=1e-8, skip=(), **_):
        comps = component_structure(spec, em)
        loc = comps.location_site
        if loc is None or loc not in params:
            return {}, None
        got = object_counts(comps, marginals)
        if got is None:
            return {}, None
        counts, n = got
        L = counts.shape[-1]
        flat = counts.reshape(-1)
        skip = set(skip)
        cand = [i for i in (flat <= threshold * n).nonzero().flatten().tolist() if i not in skip]
        if not cand or L < 2:
            return {}, None
        f = cand[0]
        B = tuple(counts.shape[:-1])
        b = tuple(int(i) for i in torch.unravel_index(torch.tensor(f // L), B)) if B else ()
        j = f % L
        row = _worst_row(comps, em, params, B, b)
        if row is None:
            return {}, None
        base = _moved_object(comps, params, B, b, j, row)
        proposals = [base]
        simplex = [s for s, d in comps.sites.items() if s in params and s in em.latents
                   and isinstance(_base(em.latents[s].constraint), type(constraints.simplex))
                   and d == params[s].dim() - 1]
        if simplex:
            proposals = [_with_weight(comps, base, params, simplex, B, b, j, eps)
                         for eps in sorted({min(0.5, c / max(n, 1)) for c in (1.0, 3.0, 10.0)})]
        best, best_lj = None, -math.inf
        for p in proposals:
            try:
                lj = em.estep(dict(params, **p), need_weights=False).log_joint
            except ModelError:
                continue
            if lj > best_lj:
                best, best_lj = p, lj
        return (best, f) if best is not None else ({}, None)

    return reseed


def _worst_row(comps: Components, em: EnumeratedModel, params: dict, B: tuple, b: tuple):
    loc = params[comps.location_site]
    rows = observation_rows(comps, B)
    if rows is None:
        return None
    rows_b = rows[b]
    score = None
    plates = tuple(size for _, size in comps.observation_plates)
    x = comps.observed_value
    if comps.observed_site is not None and x is not None and tuple(x.shape[:-1]) == plates:
        try:
            pll = em.pointwise_log_likelihood(params, comps.observed_site)
        except MetagenError:
            pll = None
        if pll is not None and pll.numel() == math.prod(plates):
            score = pll.reshape(*B, -1)[b] if B else pll.reshape(-1)
    if score is None:  # the farthest observation from every location
        centres = loc[b] if B else loc.reshape(-1, loc.shape[-1])
        score = -torch.cdist(rows_b.double(), centres.reshape(-1, loc.shape[-1]).double()).min(-1).values
    return rows_b[int(torch.argmin(score))]


def _moved_object(comps: Components, params: dict, B: tuple, b: tuple, j: int, row: torch.Tensor) -> dict:
    out = {}
    for name, d in comps.sites.items():
        if name not in params:
            continue
        v = params[name].clone()
        e = int(comps.entries[name][j])
        per_batch = bool(B) and d >= len(B) and tuple(v.shape[:len(B)]) == B
        target = v[b] if per_batch else v
        dd = d - len(B) if per_batch else d
        if name == comps.location_site:
            target.select(dd, e).copy_(row.to(v.dtype))
        elif v.is_floating_point() and target.shape[dd] > 2:
            others = [i for i in comps.entries[name].tolist() if i != e]
            med = target.index_select(dd, torch.tensor(others)).median(dd).values
            target.select(dd, e).copy_(med)
        else:
            continue
        out[name] = v
    return out


def _with_weight(comps: Components, base: dict, params: dict, names: list, B: tuple, b: tuple, j: int,
                 eps: float) -> dict:
    out = dict(base)
    for name in names:
        v = params[name].clone()
        e = int(comps.entries[name][j])
        per_batch = bool(B) and tuple(v.shape[:len(B)]) == B and comps.sites[name] >= len(B)
        w = v[b] if per_batch else v
        rest = w.clone()
        rest[..., e] = 0.0
        total = rest.sum(-1, keepdim=True)
        if not bool((total > 0).all()):
            continue
        new = rest / total * (1.0 - eps)
        new[..., e] = eps
        w.copy_(new)
        out[name] = v
    return out
