"""The generic E-step: exact posterior marginals from Pyro's enumeration.

Given a Pyro model whose discrete latent sites are enumerable, and values
``theta`` for its continuous unknowns, :class:`EnumeratedModel` traces the model
under ``poutine.enum`` (parallel enumeration) with ``theta`` conditioned in,
collects the per-site ``log_prob`` tensors ("log factors"), and contracts the
enumerated dimensions with Pyro's tensor message passing
(:func:`pyro.ops.contract.contract_to_tensor`). That gives the log evidence

    log p(x, theta) = log sum_z prod_f f(x, z, theta)

and, by reverse-mode differentiation with respect to the log factors, the
exact posterior marginal of every factor's variables (the derivative of a log
partition function with respect to a log factor is that factor's marginal).
Those marginals are the weights of the expected complete log likelihood

    Q(theta' | theta) = sum_f sum_{z_f} p(z_f | x, theta) log f(x, z_f, theta')

which the M-step maximises. Nothing here knows any particular model.

Discrete parameters. A discrete site named in ``discrete`` is not summed out:
EM treats it as a parameter (its value is conditioned in, like a continuous
unknown's) and a model hook updates it (classification EM for that site; see
:mod:`metagen_ppl.engine.em`). Model options as values. An entry of ``values``
that is neither a site nor a discrete parameter but a keyword argument of the
model (a camera's field of view, say) is passed to the model as that argument,
so a model hook may update model options during EM.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites
from pyro.distributions.util import scale_and_mask

from metagen_ppl.errors import MetagenError, ModelError
from metagen_ppl.util import broadcast_shapes


@dataclass
class LatentSite:
    """A continuous unknown: a latent ``pyro.sample`` site (MAP) or a ``pyro.param``."""

    name: str
    kind: str  # "sample", "param" or "discrete" (a discrete site EM treats as a parameter)
    constraint: constraints.Constraint
    shape: torch.Size


@dataclass
class EStep:
    """What one E-step returns (all quantities at the parameters it was run at).

    Attributes
    ----------
    log_joint : float
        ``log p(x | theta) + log p(theta)``: the MAP-EM objective, never
        decreasing across EM iterations.
    log_likelihood : float
        ``log p(x | theta)``, the log marginal likelihood (discrete sites summed out).
    log_prior : float
        ``log p(theta)`` of the latent ``pyro.sample`` sites (0 if there are none).
    marginals : dict
        Posterior marginal of each enumerated site, shape ``(*plate_shape, K)``
        (e.g. ``(N, K)`` responsibilities of an assignment site).
    weights : dict
        Posterior marginal of each log factor, in Pyro's packed layout; the
        weights of Q (empty when a model's own E-step made this E-step).
    details : dict
        Anything else a model's own E-step hands to its M-step hooks (e.g. the
        log likelihood of each scene); empty for the engine's E-step.
    """

    log_joint: float
    log_likelihood: float
    log_prior: float
    marginals: dict
    weights: dict
    details: dict = field(default_factory=dict)


def _compute_log_prob(tr):
    """``Trace.compute_log_prob`` without its per-site ``log_prob_sum`` (a wasted
    pass over every (K, N) tensor; nothing here reads it)."""
    for site in tr.nodes.values():
        if site["type"] == "sample" and "log_prob" not in site:
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            site["unscaled_log_prob"] = log_p
            site["log_prob"] = scale_and_mask(log_p, site["scale"], site["mask"])


def _keyword_arguments(fn) -> Optional[frozenset]:
    """Names ``fn`` takes as keyword arguments; ``None`` if it takes ``**kwargs`` (any name)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def _ordinal(trace, site):
    return frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)


def _raise_not_finite(log_joint: float, factors: dict, costs: dict):
    """The E-step's error for a log joint of NaN or +-inf, naming the sites that made it."""
    if log_joint == math.inf:
        sites = [n for n, c in costs.items() if float(c) == math.inf]
        sites += [n for n, (_, t) in factors.items() if bool((t == math.inf).any())]
        raise ModelError(
            f"the log joint is +inf at the current parameters (from site(s) {sites}): a density is "
            "unbounded at this value, e.g. a Dirichlet prior of concentration < 1 at a weight of "
            "exactly 0, or a noise scale of 0; the maximum a posteriori estimate does not exist "
            "there. Start inside the support, use a prior whose density is bounded (concentration "
            ">= 1), or fit with SVI (AutoNormal) or MCMC")
    bad = [n for n, c in costs.items() if not math.isfinite(float(c))]
    bad += [n for n, (_, t) in factors.items() if not bool(torch.isfinite(t).all())]
    named = f" (from site(s) {bad})" if bad else ""
    raise ModelError(f"the log evidence is not finite at the current parameters (NaN or -inf){named}: "
                     "check the data for NaN/inf and the model's supports, and that no parameter sits "
                     "on the boundary of its support (a probability of exactly 0)")


#: wrappers that keep the base distribution's support and density shape (not transforms)
_WRAPPERS = (torch.distributions.Independent, pyro.distributions.MaskedDistribution,
             pyro.distributions.ExpandedDistribution)


def _unwrap(fn):
    """The distribution under ``Independent`` / masking / expansion wrappers (``to_event``, ``mask``, ``expand``)."""
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return fn


class EnumeratedModel:
    """A model bound to its data and options, ready for E-steps and Q evaluations.

    Parameters
    ----------
    model : callable
        ``model(data, num_objects, **options)``, a Pyro model.
    data : dict
        Observed tensors passed to the model.
    num_objects : int
        Number of objects (mixture components) ``K``.
    options : dict, optional
        Extra keyword arguments of the model.
    discrete : sequence of str
        Discrete latent sites that EM treats as parameters (conditioned on the
        values given to :meth:`estep`, not enumerated).
    """

    def __init__(self, model: Callable, data: dict, num_objects: int, options: Optional[dict] = None,
                 discrete: Sequence[str] = ()):
        self.raw_model = model
        self.model = config_enumerate(model, default="parallel")
        self.data = data
        self.num_objects = num_objects
        self.options = dict(options or {})
        self._discrete_names = tuple(discrete)
        self._keywords = _keyword_arguments(model)
        #: the floating dtype of the data (the fit's precision; ``None`` if the data hold no floating tensor)
        self.dtype = next((v.dtype for v in self.data.values() if torch.is_tensor(v) and v.is_floating_point()),
                          None)
        self._discover()

    # ------------------------------------------------------------------ structure
    def _call_args(self, values: Optional[dict] = None):
        kwargs = self.options
        if values:
            extra = {k: v for k, v in values.items()
                     if k not in self.latents and k not in self.discrete
                     and (self._keywords is None or k in self._keywords)}
            if extra:
                kwargs = dict(kwargs, **extra)
        return (self.data, self.num_objects), kwargs

    def option_values(self, values: dict) -> dict:
        """The entries of ``values`` that are model options (passed to the model as keyword arguments)."""
        return self._call_args(values)[1] if values else {}

    def _discover(self):
        args, kwargs = self._call_args()
        try:
            with torch.no_grad():
                tr = prune_subsample_sites(poutine.trace(self.raw_model).get_trace(*args, **kwargs))
        except MetagenError:
            raise
        except Exception as e:
            raise ModelError(f"the model failed to run on this data: {type(e).__name__}: {e}") from e
        self.latents: "OrderedDict[str, LatentSite]" = OrderedDict()
        #: discrete sites treated as parameters (conditioned in, updated by a model hook)
        self.discrete: "OrderedDict[str, LatentSite]" = OrderedDict()
        self.enum_sites: list[str] = []
        self.observed_sites: list[str] = []
        #: the first observed site inside a plate: the one whose pointwise log likelihood is reported
        self.data_site: Optional[str] = None
        self.max_plate_nesting = 0
        self.prior_values: dict = {}
        self._discrete_prior: dict = {}
        #: latent sites whose prior density is unbounded at the boundary of their support:
        #: name -> Dirichlet concentration (broadcastable to the site's shape) with an entry < 1
        self.boundary_priors: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name, site in tr.nodes.items():
            if site["type"] == "param":
                constraint = site["kwargs"].get("constraint", constraints.real)
                self.latents[name] = LatentSite(name, "param", constraint, site["value"].shape)
                self.prior_values[name] = site["value"].detach()
            if site["type"] != "sample":
                continue
            nesting = sum(1 for f in site["cond_indep_stack"] if f.vectorized)
            self.max_plate_nesting = max(self.max_plate_nesting, nesting)
            if site["is_observed"]:
                self.observed_sites.append(name)
                if nesting and self.data_site is None:
                    self.data_site = name
                continue
            fn = site["fn"]
            if name in self._discrete_names:
                if not fn.support.is_discrete:
                    raise ModelError(f"site {name!r} is continuous; only discrete sites can be discrete "
                                     "parameters of EM")
                self.discrete[name] = LatentSite(name, "discrete", fn.support, site["value"].shape)
                self._discrete_prior[name] = site["value"].detach()
                continue
            if fn.support.is_discrete:
                base = _unwrap(fn)
                if not fn.has_enumerate_support and base is not fn and base.has_enumerate_support:
                    raise ModelError(
                        f"site {name!r} is a batch of {type(base).__name__} variables declared as one "
                        "event (.to_event / Independent), i.e. a single joint variable over "
                        f"{tuple(site['value'].shape)} values, which enumeration cannot sum out; "
                        "declare the batch with a plate instead: with pyro.plate('data', N): "
                        f"pyro.sample({name!r}, {type(base).__name__}(...), "
                        "infer={'enumerate': 'parallel'})")
                if not fn.has_enumerate_support:
                    raise ModelError(
                        f"site {name!r} is a discrete latent ({type(fn).__name__}) without finite "
                        "support, which Pyro cannot enumerate; use a distribution with finite "
                        "support (Categorical, Bernoulli) or make it continuous")
                if site["infer"].get("enumerate") not in (None, "parallel"):
                    raise ModelError(
                        f"site {name!r} is marked enumerate={site['infer']['enumerate']!r}; the EM "
                        "E-step needs parallel enumeration (infer={'enumerate': 'parallel'})")
                self.enum_sites.append(name)
            else:
                self.latents[name] = LatentSite(name, "sample", fn.support, site["value"].shape)
                self.prior_values[name] = site["value"].detach()
                base = _unwrap(fn)
                if isinstance(base, torch.distributions.Dirichlet) and bool((base.concentration < 1).any()):
                    self.boundary_priors[name] = base.concentration.detach()
        missing = [n for n in self._discrete_names if n not in self.discrete]
        if missing:
            raise ModelError(f"discrete parameters {missing} are not latent sites of the model")
        if not self.enum_sites:
            raise ModelError(
                "the model has no enumerable discrete latent site, so EM has nothing to put in "
                "its E-step; add an assignment site such as "
                "pyro.sample('z', Categorical(w), infer={'enumerate': 'parallel'}), "
                "or fit this model with --method svi or mcmc")
        self.sample_latents = [n for n, s in self.latents.items() if s.kind == "sample"]
        self.param_latents = [n for n, s in self.latents.items() if s.kind == "param"]

    # ------------------------------------------------------------------ tracing
    def trace(self, values: dict, pack: bool = True):
        """Trace the model under parallel enumeration with ``values`` conditioned in."""
        model = self.model
        if self.param_latents:
            model = poutine.substitute(model, data={n: values[n] for n in self.param_latents})
        conditioned = {n: values[n] for n in self.sample_latents}
        conditioned.update({n: values[n] for n in self.discrete})
        model = poutine.condition(model, data=conditioned)
        model = poutine.enum(model, first_available_dim=-1 - self.max_plate_nesting)
        args, kwargs = self._call_args(values)
        try:
            # arguments and data were validated by the discovery trace; skip re-checking
            # supports on every E-step and Q evaluation
            with pyro.validation_enabled(False):
                tr = prune_subsample_sites(poutine.trace(model).get_trace(*args, **kwargs))
                _compute_log_prob(tr)
            if pack:
                tr.pack_tensors()
        except MetagenError:
            raise
        except Exception as e:
            raise ModelError(f"Pyro could not enumerate this model: {type(e).__name__}: {e}") from e
        return tr

    def factors(self, values: dict):
        """Split the enumerated trace into log factors and plain costs.

        Returns
        -------
        trace, factors : dict name -> (ordinal, packed log-prob tensor) of sites that
        depend on an enumerated dimension, costs : dict name -> scalar of the others,
        sum_dims : set of enumeration symbols.
        """
        tr = self.trace(values)
        sum_dims = set()
        for name in self.enum_sites:
            site = tr.nodes[name]
            if site["infer"].get("_enumerate_dim") is None:
                raise ModelError(f"site {name!r} was not enumerated; is it inside a plate "
                                 "that Pyro cannot enumerate in parallel?")
            sum_dims.add(site["infer"]["_enumerate_symbol"])
        factors, costs = OrderedDict(), OrderedDict()
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            scale = site["scale"]
            if not (isinstance(scale, (int, float)) and scale == 1.0):
                raise ModelError(f"site {name!r} is scaled (poutine.scale or subsampling); "
                                 "the EM engine needs unscaled, full-data models")
            log_prob = site["packed"]["log_prob"]
            if sum_dims.intersection(log_prob._pyro_dims):
                factors[name] = (_ordinal(tr, site), log_prob)
            else:
                costs[name] = log_prob.sum()
        return tr, factors, costs, sum_dims

    @staticmethod
    def _contract(factors, sum_dims, target_ordinal=frozenset()):
        if not factors:  # nothing depends on an enumerated dim (every support has size 1)
            zero = torch.zeros((), dtype=torch.float64)
            zero._pyro_dims = ""
            return zero
        tree = OrderedDict()
        for ordinal, term in factors.values():
            tree.setdefault(ordinal, []).append(term)
        return contract_to_tensor(tree, sum_dims, target_ordinal=target_ordinal)

    # ------------------------------------------------------------------ E-step
    def estep(self, values: dict, need_weights: bool = True) -> EStep:
        """Exact E-step at ``values``: log evidence and posterior marginals.

        When the model has a single enumerated dimension and all its factors lie
        in the same plates (the assignment-site case of every mixture), the
        marginals are a softmax over that dimension; otherwise they come from
        reverse-mode differentiation of Pyro's contraction.
        """
        values = {k: v.detach() for k, v in values.items()}
        with torch.no_grad():
            tr, factors, costs, sum_dims = self.factors(values)
        ordinals = {ordinal for ordinal, _ in factors.values()}
        if not factors:
            # Every enumerated site has a single value (e.g. K = 1): Pyro's packing drops
            # size-1 dims, so nothing is left to sum; each posterior is 1 and log p(x) is
            # just the sum of the costs.
            return self._trivial_estep(tr, costs)
        if len(sum_dims) == 1 and len(ordinals) == 1:
            log_z, weights = self._local_estep(tr, factors, sum_dims, need_weights)
        else:
            log_z, weights = self._generic_estep(tr, factors, sum_dims, need_weights)
        zero = torch.zeros((), dtype=log_z.dtype)
        cost_total = sum((c.detach() for c in costs.values()), zero)
        log_prior = sum((costs[n].detach() for n in self.sample_latents if n in costs), zero)
        log_joint = float(log_z + cost_total)
        if not math.isfinite(log_joint):
            _raise_not_finite(log_joint, factors, costs)
        marginals = OrderedDict()
        if need_weights:
            for name in self.enum_sites:
                marginals[name] = self._site_marginal(tr, name, weights[name])
        return EStep(log_joint=log_joint, log_likelihood=log_joint - float(log_prior),
                     log_prior=float(log_prior), marginals=marginals, weights=weights)

    def _trivial_estep(self, tr, costs):
        zero = torch.zeros((), dtype=next(iter(costs.values())).dtype)
        log_joint = float(sum((c.detach() for c in costs.values()), zero))
        if not math.isfinite(log_joint):
            _raise_not_finite(log_joint, {}, costs)
        log_prior = float(sum((costs[n].detach() for n in self.sample_latents if n in costs), zero))
        marginals = OrderedDict()
        for name in self.enum_sites:
            frames = sorted((f for f in tr.nodes[name]["cond_indep_stack"] if f.vectorized),
                            key=lambda f: f.dim)
            marginals[name] = torch.ones(*[f.size for f in frames], 1, dtype=zero.dtype)
        return EStep(log_joint=log_joint, log_likelihood=log_joint - log_prior,
                     log_prior=log_prior, marginals=marginals, weights=OrderedDict())

    @staticmethod
    def _local_estep(tr, factors, sum_dims, need_weights):
        """One enumerated dim, one plate context: softmax over it."""
        enum_dim = tr.symbol_to_dim[next(iter(sum_dims))]
        dense = [tr.nodes[name]["log_prob"] for name in factors]
        shape = broadcast_shapes(*(d.shape for d in dense))
        # At large N the cost is in allocating (and page-faulting) (K, N) buffers,
        # not in arithmetic: accumulate into one buffer and work in place. The
        # trace is private to this call, so a full-shape log-prob tensor it made
        # may serve as that buffer.
        own = [i for i, d in enumerate(dense)
               if d.shape == shape and d.is_contiguous() and d._base is None and not d.requires_grad]
        if own:
            total = dense[own[0]]
            rest = [d for i, d in enumerate(dense) if i != own[0]]
        else:
            total = dense[0].expand(shape).clone()
            rest = dense[1:]
        for d in rest:
            total.add_(d)
        m = total.amax(enum_dim, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        total.sub_(m).exp_()  # total = exp(f - max)
        norm = total.sum(enum_dim, keepdim=True)
        log_z = (norm.log() + m).sum()
        weights = OrderedDict()
        if need_weights:
            post = total.div_(norm)
            for name in factors:
                weights[name] = post
        return log_z, weights

    def _generic_estep(self, tr, factors, sum_dims, need_weights):
        """Any enumerable structure: d log Z / d log f = marginal of factor f."""
        with torch.enable_grad():
            leaves = OrderedDict()
            for name, (ordinal, term) in factors.items():
                leaf = term.detach().requires_grad_(need_weights)
                leaf._pyro_dims = term._pyro_dims
                leaves[name] = (ordinal, leaf)
            log_z = packed.unpack(self._contract(leaves, sum_dims), tr.symbol_to_dim).sum()
            weights = OrderedDict()
            if need_weights:
                grads = torch.autograd.grad(log_z, [leaf for _, leaf in leaves.values()])
                for (name, (_, leaf)), grad in zip(leaves.items(), grads):
                    grad._pyro_dims = leaf._pyro_dims
                    weights[name] = packed.unpack(grad, tr.symbol_to_dim)
        return log_z.detach(), weights

    def _site_marginal(self, tr, name, w):
        """Marginal ``(*plate_shape, K)`` of one enumerated site from its factor's weights."""
        site = tr.nodes[name]
        enum_dim = site["infer"]["_enumerate_dim"]
        other = [tr.nodes[n]["infer"]["_enumerate_dim"] for n in self.enum_sites if n != name]
        other = [d for d in other if w.dim() >= -d and w.shape[d] > 1]
        if other:  # sum out the enumeration dims of the site's parents
            w = w.sum(other, keepdim=True)
        dense = w.unsqueeze(-1).transpose(-1, enum_dim - 1).squeeze(enum_dim - 1)
        # (*plate_shape, K) from the site's own plates: a plate of size 1 keeps its dim
        frames = sorted((f for f in site["cond_indep_stack"] if f.vectorized), key=lambda f: f.dim)
        return dense.reshape(tuple(f.size for f in frames) + (dense.shape[-1],)).detach()

    # ------------------------------------------------------------------ Q
    def q_value(self, values: dict, estep: EStep) -> torch.Tensor:
        """Differentiable ``Q(values | estep) + log p(values)`` (expected complete log joint)."""
        tr = self.trace(values, pack=False)
        total = torch.zeros(())
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            lp = site["log_prob"]
            w = estep.weights.get(name)
            if w is None:
                total = total + lp.sum()
            else:
                try:
                    broadcast_shapes(w.shape, lp.shape)
                except RuntimeError:
                    raise ModelError(f"the factor of site {name!r} changed shape between E-step and "
                                     "M-step; the model's structure must not depend on parameter values")
                term = (w * lp).sum()
                if torch.isnan(term):
                    # 0 * log 0: an assignment of zero posterior weight under a zero prior
                    # probability (an emptied component with pi_k = 0) contributes 0 to Q
                    term = torch.where(w > 0, w * lp, torch.zeros((), dtype=lp.dtype)).sum()
                total = total + term
        return total

    def log_evidence(self, values: dict) -> torch.Tensor:
        """Differentiable ``log p(x | values) + log p(values)`` (discrete sites summed out)."""
        tr, factors, costs, sum_dims = self.factors(values)
        log_z = packed.unpack(self._contract(factors, sum_dims), tr.symbol_to_dim).sum()
        return log_z + sum(costs.values(), torch.zeros(()))

    def pointwise_log_likelihood(self, values: dict, site: str) -> Optional[torch.Tensor]:
        """``log p(x_n | values)`` per element of the plate of observed ``site``.

        Returns ``None`` where the observations are not conditionally independent
        given ``values`` (an enumerated site outside their plate couples them).
        """
        values = {k: v.detach() for k, v in values.items()}
        with torch.no_grad():
            tr, factors, costs, sum_dims = self.factors(values)
            target = _ordinal(tr, tr.nodes[site])
            if not target:
                return None
            for name in self.enum_sites:
                if not target <= _ordinal(tr, tr.nodes[name]):
                    return None
            # plates of size 1 have no dim in the packed tensors: do not ask the ring for them
            sizes = {tr.plate_to_symbol[f.name]: f.size
                     for f in tr.nodes[site]["cond_indep_stack"] if f.vectorized}
            ring_target = frozenset(s for s in target if sizes.get(s, 2) > 1)
            ll = packed.unpack(self._contract(factors, sum_dims, target_ordinal=ring_target),
                               tr.symbol_to_dim)
            for name in costs:
                if name in self.sample_latents:
                    continue
                node = tr.nodes[name]
                if _ordinal(tr, node) != target:
                    return None  # a cost outside the observation plate: not pointwise
                ll = ll + packed.unpack(node["packed"]["log_prob"], tr.symbol_to_dim)
            return ll.reshape(-1).detach()

    def log_likelihood_by_site(self, values: dict) -> "OrderedDict[str, float]":
        """``log p(observed | values)`` split by observed site; the entries sum to the log likelihood.

        An observed site that depends on no enumerated site (a count, a ``pyro.factor``) is its own
        entry, ``log p(site | values)``. The observed sites that depend on enumerated sites share
        them, so their log probability does not split: they form one entry keyed by their names
        joined with ``"+"`` (``"x"`` for the baseline, ``"x+o"`` for the categorical model), the
        log probability of them all with the discrete sites summed out.
        """
        values = {k: v.detach() for k, v in values.items()}
        with torch.no_grad():
            tr, factors, costs, sum_dims = self.factors(values)
            total = float(packed.unpack(self._contract(factors, sum_dims), tr.symbol_to_dim).sum())
        total += sum(float(c) for n, c in costs.items() if n not in self.sample_latents)
        out: "OrderedDict[str, float]" = OrderedDict()
        for name in self.observed_sites:
            if name in costs:
                out[name] = float(costs[name])
        joint = [n for n in self.observed_sites if n in factors]
        rest = total - sum(out.values())
        if joint or rest != 0.0:
            out["+".join(joint or self.enum_sites)] = rest
        return out

    def check_dtype(self, dtype=None) -> None:
        """Trace the model once (at its prior draw, in ``dtype``) and check every site computes in ``dtype``.

        A constant made in another precision (``torch.ones(K)`` or ``torch.tensor(1.0)`` without
        ``dtype=``, float32 by default) makes its site's log probability float32 in a float64 fit:
        that term silently loses precision, and the contraction of mixed precisions can fail
        (Pyro's einsum refuses them). Raises :class:`ModelError` naming the site, so the model is
        fixed before any fitting. A distribution whose *parameters* are in another precision
        while its log probability is in ``dtype`` (a float32 ``LogNormal(0., 2.)`` in a float64
        fit: ``log(2.)`` rounded to float32) gets a RuntimeWarning naming the sites: the fit
        works, to that precision. ``dtype`` defaults to the data's (:attr:`dtype`).
        """
        dtype = self.dtype if dtype is None else dtype
        if dtype is None:
            return
        values = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.prior_values.items()}
        values.update(self._discrete_prior)
        with torch.no_grad():
            tr = self.trace(values, pack=False)
        lossy = []
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            while isinstance(fn, _WRAPPERS + (torch.distributions.TransformedDistribution,)):
                fn = fn.base_dist
            for key in getattr(fn, "arg_constraints", {}):
                v = fn.__dict__.get(key)  # set attributes only (a lazy property is not computed here)
                if torch.is_tensor(v) and v.is_floating_point() and v.dtype != dtype:
                    lossy.append(f"{name}.{key} ({str(v.dtype).replace('torch.', '')})")
            lp = site["log_prob"]
            if torch.is_tensor(lp) and lp.is_floating_point() and lp.dtype != dtype:
                have, want = str(lp.dtype).replace("torch.", ""), str(dtype).replace("torch.", "")
                raise ModelError(
                    f"site {name!r} computes its log probability in {have}, but this fit runs in {want} "
                    f"(the data's precision): a constant in the model is {have} (e.g. torch.ones(K) or "
                    f"torch.tensor(1.0) made without dtype=). Create the model's constants in the data's "
                    f"dtype (torch.ones(K, dtype=x.dtype)), or fit in {have} (dtype='{have}')")
        if lossy:
            want = str(dtype).replace("torch.", "")
            warnings.warn(
                f"the model's distributions have parameters in another precision than the fit ({want}): "
                f"{', '.join(lossy[:6])}{' ...' if len(lossy) > 6 else ''}; their log densities are "
                f"computed partly in that precision (e.g. log(scale) of a float32 scale: errors ~1e-7 "
                f"relative). Create the constants in the data's dtype (torch.tensor(2.0, dtype=x.dtype)), "
                f"or set torch.set_default_dtype(torch.{want}) before fitting", RuntimeWarning, stacklevel=4)
