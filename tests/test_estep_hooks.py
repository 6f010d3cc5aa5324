"""A model's own batched E-step (its ``estep`` hook) must equal the engine's Pyro-enumeration E-step.

:class:`metagen_ppl.engine.em.ModelSteps` uses a model's ``estep`` hook instead of
:meth:`EnumeratedModel.estep <metagen_ppl.engine.enumeration.EnumeratedModel.estep>`
whenever the model has one, so EM's objective, its convergence test and every
M-step read the hook's numbers. These tests check, in float64 and at non-trivial
parameters (random, and fitted by EM), that the hooks of the detector model (M3)
and of the projective model (M4) give the same log joint, log likelihood, log
prior and posterior of ``z`` as the engine, for learned and for fixed parameters
(the fixed ones given as model options), and that EM runs the same with or
without the hook.

Tolerances. Both sides compute the same finite sums in float64, only in a
different order (the hook: a ``logsumexp`` per detection and sums over videos,
frames and detections; the engine: Pyro's packed log factors, an in-place
max-shifted softmax over the enumerated dimension, the costs summed site by
site). Rounding then differs by a few ulps per term, i.e. relative differences
around 1e-14 for sums of ~1e3 terms; a relative tolerance of 1e-10 leaves four
orders of magnitude for that while any missing or extra term (a ``-log n!``, a
``-log vol`` of one object, one prior density, one detection's hallucination
term) changes the totals by far more than 1e-10 relative. Posteriors are
probabilities in [0, 1]: they are compared with an absolute 1e-10.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metagen_ppl.domain.metagen_data import CATEGORIES, parse_videos
from metagen_ppl.domain.scenes import parse_scenes
from metagen_ppl.engine.em import ModelSteps, fit_em, run_em
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.registry import load_model
from metagen_ppl.errors import ModelError
from metagen_ppl.engine.setup import bind, initial_values
from metagen_ppl.models import detector
from metagen_ppl.models import projective as P

DT = torch.float64
C = len(CATEGORIES)
REL = 1e-10   # see the module docstring
ATOL = 1e-10


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- helpers
def _assert_same_estep(hook, engine, data, what=""):
    """The hook's EStep equals the engine's on the totals and on the posterior of ``z`` (real detections)."""
    for name in ("log_joint", "log_likelihood", "log_prior"):
        a, b = getattr(hook, name), getattr(engine, name)
        assert a == pytest.approx(b, rel=REL, abs=1e-12), f"{what}: {name} hook={a!r} engine={b!r} (diff {a - b:.3g})"
    z_hook = hook.marginals["z"]
    z_eng = engine.marginals["z"].reshape(z_hook.shape)
    mask = data["det_mask"].unsqueeze(-1)
    diff = (torch.where(mask, z_hook, 0.0) - torch.where(mask, z_eng, 0.0)).abs().max()
    assert float(diff) <= ATOL, f"{what}: posterior of z differs by {float(diff):.3g}"
    # the posterior of a real detection is a distribution
    rows = z_hook.sum(-1)[data["det_mask"]]
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-12, rtol=0)


def _engine_estep(model, data, K, options, params):
    em = EnumeratedModel(model, data, K, options)
    return em, em.estep(params)


def _check_latents(em, params, expected):
    """The cases test what they say: the learned sites are exactly ``expected`` (and all given)."""
    assert set(em.latents) == set(expected), (sorted(em.latents), sorted(expected))
    assert set(expected) <= set(params)


def _rand(gen, shape, lo, hi):
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=DT)


# --------------------------------------------------------------------------- detector (M3)
@pytest.fixture(scope="module")
def det_scenes():
    return parse_scenes(detector.simulate(5, 6, seed=11))


def _detector_structure(scenes, K, seed):
    """True objects in shuffled slots, one extra active slot of a random category where there is room,
    inactive slots with random categories (some equal to detected categories) in between."""
    g = torch.Generator().manual_seed(seed)
    S = len(scenes)
    cats = torch.randint(C, (S, K), generator=g)
    active = torch.zeros(S, K, dtype=torch.bool)
    locs = _rand(g, (S, K, 3), 0.0, 1.0)
    lo, hi = scenes.data()["box"]
    locs = lo + (hi - lo) * (0.05 + 0.9 * locs)          # inside the box: the location prior is uniform on it
    truths = [(truth["categories"], truth["positions"]) for truth in scenes.truth]
    return _place_truth(g, cats, active, locs, truths, lo, hi, noise=0.15, extra_parity=0)


def _place_truth(g, cats, active, locs, truths, lo, hi, *, noise, extra_parity):
    """Put each scene's true objects ``(categories, positions)`` into shuffled slots of ``cats``,
    ``active``, ``locs`` (in place; positions jittered by ``noise`` and kept inside the box), and
    activate one extra slot in scenes of index parity ``extra_parity`` where there is room."""
    K = cats.shape[1]
    for s, (categories, positions) in enumerate(truths):
        n = len(categories)
        slots = torch.randperm(K, generator=g)[:n]
        cats[s, slots] = torch.as_tensor(categories)
        active[s, slots] = True
        noisy = torch.as_tensor(positions, dtype=DT) + noise * torch.randn(n, 3, generator=g, dtype=DT)
        locs[s, slots] = torch.maximum(torch.minimum(noisy, hi - 1e-3), lo + 1e-3)
        if n < K - 1 and s % 2 == extra_parity:            # an object the truth does not have
            free = [k for k in range(K) if not active[s, k]]
            active[s, free[0]] = True
    assert (~active).any() and active.any() and len(set(cats[active].tolist())) >= 3
    return cats, active, locs


def _detector_V(seed):
    g = torch.Generator().manual_seed(seed)
    return {"rates": _rand(g, (C,), 0.2, 1.8), "hallucination": _rand(g, (C,), 0.03, 0.9),
            "scale": torch.tensor(0.37, dtype=DT)}


DET_CASES = {
    # name: (sites given as options, i.e. fixed; the others are latent sites of the model)
    "learned V": (),
    "fixed V": ("rates", "hallucination", "scale"),
    "fixed rates, learned hallucination and scale": ("rates",),
    "fixed scale": ("scale",),
}


@pytest.mark.parametrize("case", list(DET_CASES))
def test_detector_hook_equals_engine_at_random_parameters(det_scenes, case):
    data = det_scenes.data()
    K = 5
    cats, active, locs = _detector_structure(det_scenes, K, seed=1)
    V = _detector_V(seed=2)
    fixed = DET_CASES[case]
    options = {"cats": cats, "active": active, **{k: V[k] for k in fixed}}
    params = {"locs": locs, **{k: v for k, v in V.items() if k not in fixed}}
    em, eng = _engine_estep(detector.model, data, K, options, params)
    _check_latents(em, params, ["locs", *[k for k in V if k not in fixed]])
    hook = detector.estep(data, params, K, **options)
    _assert_same_estep(hook, eng, data, case)


def test_detector_hook_equals_engine_with_prior_hyperparameters(det_scenes):
    """Non-default prior hyperparameters (model options) reach both E-steps alike."""
    data = det_scenes.data()
    K = 4
    cats, active, locs = _detector_structure(det_scenes, K, seed=5)
    V = _detector_V(seed=6)
    options = {"cats": cats, "active": active, "rate_prior_shape": 3.0, "rate_prior_rate": 1.5,
               "hall_prior_shape": 1.5, "hall_prior_rate": 2.0, "scale_prior_shape": 3.0,
               "scale_prior_rate": 0.2}
    params = dict(V, locs=locs)
    em, eng = _engine_estep(detector.model, data, K, options, params)
    _assert_same_estep(detector.estep(data, params, K, **options), eng, data, "hyperparameters")


@pytest.mark.parametrize("fixed", [(), ("rates", "hallucination", "scale")], ids=["learned V", "fixed V"])
def test_detector_hook_equals_engine_at_fitted_parameters(det_scenes, fixed):
    data = det_scenes.data()
    K = 5
    cats, active, _ = _detector_structure(det_scenes, K, seed=3)
    V = _detector_V(seed=4)
    options = {"cats": cats, "active": active, **{k: V[k] for k in fixed}}
    fit = fit_em("detector", data, K, options=options, tol=None, max_iter=8, seed=2)
    params = {k: v for k, v in fit.params.items()}
    em, eng = _engine_estep(detector.model, data, K, options, params)
    hook = detector.estep(data, params, K, **options)
    _assert_same_estep(hook, eng, data, f"fitted, {fixed or 'learned V'}")
    # and the fit reports the same objective as the engine at its end point
    assert fit.log_joint == pytest.approx(eng.log_joint, rel=REL)


# --------------------------------------------------------------------------- projective (M4)
@pytest.fixture(scope="module")
def videos():
    return parse_videos(P.simulate(4, 7, seed=5))


def _projective_structure(videos, data, K, seed):
    g = torch.Generator().manual_seed(seed)
    V = len(videos)
    lo, hi = data["box"]
    cats = torch.randint(C, (V, K), generator=g)
    active = torch.zeros(V, K, dtype=torch.bool)
    locs = lo + (hi - lo) * (0.05 + 0.9 * torch.rand(V, K, 3, generator=g, dtype=DT))
    truths = [(video.gt_categories, video.gt_positions) for video in videos]
    return _place_truth(g, cats, active, locs, truths, lo, hi, noise=0.05, extra_parity=1)


def _projective_V(seed):
    g = torch.Generator().manual_seed(seed)
    B = P.num_bins()
    return {"rates": _rand(g, (C,), 0.3, 1.6), "hallucination": _rand(g, (C,), 0.02, 0.4),
            "pixel_scale": torch.tensor(4.3, dtype=DT),
            "mark_real": torch.softmax(torch.randn(C, B, generator=g, dtype=DT), -1),
            "mark_hall": torch.softmax(torch.randn(C, B, generator=g, dtype=DT), -1)}


PROJ_SITES = ("rates", "hallucination", "pixel_scale", "mark_real", "mark_hall")
PROJ_CASES = {
    # name: (fixed parameter sites, locs fixed, half_fov option)
    "learned V": ((), False, None),
    "learned V, half_fov option": ((), False, 0.45),
    "fixed V": (PROJ_SITES, False, None),
    "fixed rates and marks": (("rates", "mark_real", "mark_hall"), False, None),
    "fixed locs": ((), True, None),
    "fixed locs and V, half_fov option": (PROJ_SITES, True, 0.52),
}


@pytest.mark.parametrize("case", list(PROJ_CASES))
def test_projective_hook_equals_engine_at_random_parameters(videos, case):
    data = P.data_from_videos(videos)
    K = 4
    cats, active, locs = _projective_structure(videos, data, K, seed=7)
    V = _projective_V(seed=8)
    fixed, fixed_locs, half_fov = PROJ_CASES[case]
    options = {"cats": cats, "active": active, **{k: V[k] for k in fixed}}
    if fixed_locs:
        options["locs"] = locs
    if half_fov is not None:
        options["half_fov"] = half_fov
    params = {k: v for k, v in V.items() if k not in fixed}
    if not fixed_locs:
        params["locs"] = locs
    em, eng = _engine_estep(P.model, data, K, options, params)
    _check_latents(em, params, list(params))
    hook = P.estep(data, params, K, **options)
    _assert_same_estep(hook, eng, data, case)


def test_projective_hook_equals_engine_with_half_fov_as_a_value(videos):
    """A model option carried in the values (as EM carries ``half_fov``) reaches both E-steps alike."""
    data = P.data_from_videos(videos)
    K = 4
    cats, active, locs = _projective_structure(videos, data, K, seed=9)
    params = dict(_projective_V(seed=10), locs=locs, half_fov=torch.tensor(0.47, dtype=DT))
    options = {"cats": cats, "active": active}
    em = EnumeratedModel(P.model, data, K, options)
    eng = em.estep(params)
    hook = P.estep(data, params, K, **options)
    _assert_same_estep(hook, eng, data, "half_fov value")
    # and it matters: the default field of view gives another value
    other = P.estep(data, {k: v for k, v in params.items() if k != "half_fov"}, K, **options)
    assert abs(other.log_joint - hook.log_joint) > 1e-6 * abs(hook.log_joint)


def test_projective_hook_equals_engine_at_fitted_parameters(videos):
    """After EM (the model's closed forms, the generic optimiser for the locations) at a fixed structure."""
    data = P.data_from_videos(videos)
    K = 4
    cats, active, _ = _projective_structure(videos, data, K, seed=11)
    options = {"cats": cats, "active": active}
    fit = fit_em("projective", data, K, options=options, tol=None, max_iter=3, optimizer_steps=10, seed=1)
    params = dict(fit.params)
    em, eng = _engine_estep(P.model, data, K, options, params)
    hook = P.estep(data, params, K, **options)
    _assert_same_estep(hook, eng, data, "fitted")


# --------------------------------------------------------------------------- EM with and without the hook
def _rel_close(a, b, rel=1e-9):
    return all(abs(x - y) <= rel * max(abs(x), abs(y), 1.0) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("fixed", [(), ("rates", "hallucination", "scale")], ids=["learned V", "fixed V"])
def test_detector_em_same_with_and_without_the_hook(det_scenes, fixed):
    data = det_scenes.data()
    K = 5
    cats, active, _ = _detector_structure(det_scenes, K, seed=12)
    V = _detector_V(seed=13)
    options = {"cats": cats, "active": active, **{k: V[k] for k in fixed}}
    spec = load_model("detector")
    assert spec.estep is not None
    em, K, dtype = bind(spec, data, K, options, "float64")
    start = initial_values(spec, em, torch.Generator().manual_seed(0), dtype)
    runs = {}
    for fast in (False, True):
        steps = ModelSteps(spec, em, fast_estep=fast)
        assert (steps.model_estep is not None) == fast
        runs[fast] = run_em(steps, dict(start), tol=None, max_iter=12)
    slow, fast = runs[False], runs[True]
    assert slow.n_iter == fast.n_iter == 12
    assert _rel_close(slow.trace, fast.trace), list(zip(slow.trace, fast.trace))
    assert fast.trace[-1] > fast.trace[0]                  # EM moved: the comparison is not vacuous
    assert set(slow.values) == set(fast.values)
    for k in slow.values:
        assert torch.allclose(slow.values[k], fast.values[k], rtol=1e-9, atol=1e-9), k
    _assert_same_estep(fast.estep, slow.estep, em.data, "after EM")


def test_detector_fit_em_same_with_and_without_the_hook(det_scenes):
    """``fit_em`` (restarts, convergence test, result) with the model's spec and with its hook removed."""
    data = det_scenes.data()
    K = 4
    cats, active, _ = _detector_structure(det_scenes, K, seed=14)
    options = {"cats": cats, "active": active}
    spec = load_model("detector")
    plain = dataclasses.replace(spec, estep=None)
    kw = dict(options=options, tol=1e-10, max_iter=60, num_inits=2, seed=3)
    a = fit_em(spec, data, K, **kw)
    b = fit_em(plain, data, K, **kw)
    assert a.n_iter == b.n_iter and a.converged == b.converged
    assert _rel_close(a.trace, b.trace), list(zip(a.trace, b.trace))
    assert _rel_close(a.info["restart_log_joint"], b.info["restart_log_joint"])
    assert a.log_joint == pytest.approx(b.log_joint, rel=1e-9)
    assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-9)
    assert a.info["log_prior"] == pytest.approx(b.info["log_prior"], rel=1e-9)
    for k in a.params:
        assert torch.allclose(a.params[k], b.params[k], rtol=1e-9, atol=1e-9), k
    mask = data["det_mask"].unsqueeze(-1)
    za = a.posteriors["z"]
    zb = b.posteriors["z"].reshape(za.shape)
    assert float((torch.where(mask, za, 0.0) - torch.where(mask, zb, 0.0)).abs().max()) <= 1e-9


# --------------------------------------------------------------------------- edge cases of the protocol
def _detector_case(det_scenes):
    data = det_scenes.data()
    cats, active, locs = _detector_structure(det_scenes, 5, seed=1)
    return detector, data, 5, {"cats": cats, "active": active}, dict(_detector_V(seed=2), locs=locs), "scale"


def _projective_case(videos):
    data = P.data_from_videos(videos)
    cats, active, locs = _projective_structure(videos, data, 4, seed=7)
    return P, data, 4, {"cats": cats, "active": active}, dict(_projective_V(seed=8), locs=locs), "pixel_scale"


@pytest.mark.parametrize("which", ["detector", "projective"])
def test_hook_and_engine_agree_on_a_location_outside_the_box(det_scenes, videos, which):
    """The location prior is uniform on the room's box: an active object outside it has prior density 0.
    The engine refuses such a point (log joint -inf, ModelError); the hook must not report a finite
    log joint there (EM would start from, and report, an impossible point)."""
    mod, data, K, options, params, _ = _detector_case(det_scenes) if which == "detector" else _projective_case(videos)
    s, k = options["active"].nonzero()[0].tolist()
    hi = data["box"][1]
    locs = params["locs"].clone()
    locs[s, k, 1] = hi[1] + 1.0                             # above the ceiling
    params = dict(params, locs=locs)
    em = EnumeratedModel(mod.model, data, K, options)
    with pytest.raises(ModelError):
        em.estep(params)
    try:
        est = mod.estep(data, params, K, **options)
    except ModelError:
        return
    assert est.log_joint == float("-inf") and est.log_prior == float("-inf"), (
        f"{which} hook: finite log joint {est.log_joint} (log prior {est.log_prior}) at a location outside the "
        "box, where the engine's log joint is -inf")


@pytest.mark.parametrize("which", ["detector", "projective"])
def test_hook_and_engine_agree_when_a_value_overrides_an_option(det_scenes, videos, which):
    """A model option that is also in the values: the engine passes the value to the model (a model hook may
    update model options during EM, see metagen_ppl.engine.enumeration); the hook must use the value too."""
    mod, data, K, options, params, name = (_detector_case(det_scenes) if which == "detector"
                                           else _projective_case(videos))
    options = dict(options, **{name: float(params[name]) * 0.6})     # the option: another noise scale
    em = EnumeratedModel(mod.model, data, K, options)
    assert name not in em.latents
    eng = em.estep(params)
    # the engine did use the value: it equals the engine at the value given as the option
    ref = EnumeratedModel(mod.model, data, K, dict(options, **{name: params[name]})).estep(
        {k: v for k, v in params.items() if k != name})
    assert eng.log_joint == pytest.approx(ref.log_joint, rel=REL)
    _assert_same_estep(mod.estep(data, params, K, **options), eng, data, f"{which}: {name} value over option")
