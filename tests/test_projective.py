"""Tests of models/projective.py: the E-step against brute force, the M-steps, the Occam
factor, the simulator and the recovery of V on simulated data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from metagen_ppl.models import projective as P
from metagen_ppl.models.projective.generative import _scale_log_prior, _scale_prior
from metagen_ppl.models.projective.mstep import object_batch, project_views, project_with_jacobian
from metagen_ppl.domain import camera
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.errors import DataError
from metagen_ppl.domain.metagen_data import COCO_TO_CATEGORY, parse_videos

COCO = {v: k for k, v in COCO_TO_CATEGORY.items()}


def _view(cam, look, dets):
    """A frame dict; ``dets`` = [(category, (px, py), score)]."""
    return {"camera": dict(zip("xyz", cam)), "lookat": dict(zip("xyz", look)),
            "detections": {"scores": [s for _, _, s in dets], "labels": [COCO[c] for c, _, _ in dets],
                           "center": [list(u) for _, u, _ in dets],
                           "top_left": [[u[0] - 5, u[1] - 5] for _, u, _ in dets],
                           "bottom_right": [[u[0] + 5, u[1] + 5] for _, u, _ in dets]}}


def _tiny():
    """One video, two frames, two objects (chair, plant) and four detections by hand."""
    cams = [(5.0, 2.0, 0.0), (0.0, 2.0, 5.0)]
    looks = [(0.0, 0.5, 0.0), (0.0, 0.5, 0.0)]
    mu = torch.tensor([[0.5, 0.4, 0.3], [-1.0, 0.3, -0.5]], dtype=torch.float64)
    pix, _ = camera.project(mu.unsqueeze(0), torch.tensor(cams, dtype=torch.float64).unsqueeze(1),
                            torch.tensor(looks, dtype=torch.float64).unsqueeze(1))
    p = pix.tolist()
    frames = [[(0, (p[0][0][0] + 3.0, p[0][0][1] - 2.0), 0.93),       # chair, near object 0
               (1, (p[0][1][0] - 4.0, p[0][1][1] + 1.0), 0.45),       # plant, near object 1
               (0, (30.0, 200.0), 0.12)],                             # chair, far from everything
              [(0, (p[1][0][0] + 1.0, p[1][0][1] + 6.0), 0.71)]]      # chair, near object 0
    video = {"path": "tiny", "views": [_view(c, l, f) for c, l, f in zip(cams, looks, frames)],
             "labels": [{"category_name": "chair", "position": mu[0].tolist()},
                        {"category_name": "plant", "position": mu[1].tolist()}]}
    return video, mu, cams, looks, frames


def _values(mu, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, B = 5, P.num_bins()
    return {"locs": mu.unsqueeze(0), "rates": torch.tensor([0.8, 1.3, 0.2, 0.9, 0.4], dtype=torch.float64),
            "hallucination": torch.tensor([0.05, 0.1, 0.02, 0.2, 0.01], dtype=torch.float64),
            "pixel_scale": torch.tensor(4.5, dtype=torch.float64),
            "mark_real": torch.softmax(torch.randn(C, B, generator=g, dtype=torch.float64), -1),
            "mark_hall": torch.softmax(torch.randn(C, B, generator=g, dtype=torch.float64), -1)}


def test_estep_matches_brute_force():
    video, mu, cams, looks, frames = _tiny()
    data = P.data_from_videos(parse_videos([video]))
    cats = torch.tensor([[0, 1]])
    active = torch.tensor([[True, True]])
    vals = _values(mu)
    r, h, s = vals["rates"], vals["hallucination"], float(vals["pixel_scale"])
    # brute force: enumerate every joint assignment of each frame's detections
    total = 0.0
    brute_resp = []
    for t, dets in enumerate(frames):
        pix, depth = camera.project(mu, torch.tensor(cams[t], dtype=torch.float64),
                                    torch.tensor(looks[t], dtype=torch.float64))
        vis = camera.visible(pix, depth)
        lam = float(h.sum()) + sum(float(r[c]) for k, c in enumerate([0, 1]) if vis[k])
        comps = []                                   # per detection: intensity of z = 0, 1, 2
        for c, u, score in dets:
            b = min(int(score * 10), 9)
            row = [float(h[c]) / 256 ** 2 * float(vals["mark_hall"][c, b])]
            for k, ck in enumerate([0, 1]):
                if vis[k] and ck == c:
                    d2 = float(((torch.tensor(u, dtype=torch.float64) - pix[k]) ** 2).sum())
                    row.append(float(r[ck]) * math.exp(-d2 / (2 * s * s)) / (2 * math.pi * s * s)
                               * float(vals["mark_real"][c, b]))
                else:
                    row.append(0.0)
            comps.append(row)
        joint_sum = 0.0
        marg = np.zeros((len(dets), 3))
        for z in itertools.product(range(3), repeat=len(dets)):
            w = np.prod([comps[n][z[n]] for n in range(len(dets))])
            joint_sum += w
            for n in range(len(dets)):
                marg[n, z[n]] += w
        total += -lam - math.lgamma(len(dets) + 1) + math.log(joint_sum)
        brute_resp.append(marg / joint_sum)
    ll, resp = P.video_log_likelihood(data, vals, cats, active)
    assert float(ll.sum()) == pytest.approx(total, rel=1e-10, abs=1e-8)
    em = EnumeratedModel(P.model, data, 2, {"cats": cats, "active": active})
    est = em.estep({k: vals[k] for k in em.latents})
    assert est.log_likelihood == pytest.approx(total, rel=1e-10, abs=1e-8)
    z = est.marginals["z"].reshape(resp.shape)
    for t, br in enumerate(brute_resp):
        n = len(br)
        assert torch.allclose(resp[0, t, :n], torch.tensor(br), atol=1e-10)
        assert torch.allclose(z[0, t, :n], torch.tensor(br), atol=1e-10)


def test_engine_and_direct_agree_on_simulated_data():
    videos = parse_videos(P.simulate(4, 8, seed=3))
    data = P.data_from_videos(videos)
    K = 3
    cats = torch.zeros(4, K, dtype=torch.long)
    active = torch.zeros(4, K, dtype=torch.bool)
    locs = torch.zeros(4, K, 3, dtype=torch.float64)
    for i, v in enumerate(videos):
        n = len(v.gt_categories)
        cats[i, :n], active[i, :n], locs[i, :n] = v.gt_categories, True, v.gt_positions
    vals = _values(torch.zeros(K, 3, dtype=torch.float64), seed=1)
    vals["locs"] = locs + 0.05
    em = EnumeratedModel(P.model, data, K, {"cats": cats, "active": active})
    est = em.estep(vals)
    ll, resp = P.video_log_likelihood(data, vals, cats, active)
    assert est.log_likelihood == pytest.approx(float(ll.sum()), rel=1e-12)
    assert torch.allclose(est.marginals["z"].reshape(resp.shape) * data["det_mask"][..., None], resp, atol=1e-12)
    # the closed-form M-step of V, sigma_px and the marks maximises the engine's Q
    upd = P.closed_form_mstep(data, {"z": resp}, vals, K, cats=cats, active=active)
    new = dict(vals, **upd)
    q_new = float(em.q_value(new, est))
    assert q_new >= float(em.q_value(vals, est))
    for name in ("rates", "hallucination", "pixel_scale"):
        for f in (0.9, 1.1):
            assert float(em.q_value(dict(new, **{name: new[name] * f}), est)) < q_new
    # Gauss-Newton location M-step: raises the engine's Q and agrees with its generic LBFGS M-step
    from metagen_ppl.engine.mstep import optimizer_mstep

    gn = P.location_mstep(data, new, resp, cats, active, iters=20)
    lb = optimizer_mstep(em, new, est, ["locs"], steps=100)
    q_gn = float(em.q_value(dict(new, locs=gn), est))
    assert q_gn > q_new
    assert q_gn >= float(em.q_value(lb, est)) - 1e-6 * abs(q_gn)
    # per object, Gauss-Newton reaches at least the generic optimiser's value; where the object has
    # enough detections to pin it down the two agree (two or three detections leave a flat direction)
    v, k, kw = object_batch(data, resp, cats, active, new)
    per_gn = P.location_objective(gn[v, k], **kw)
    per_lb = P.location_objective(lb["locs"][v, k], **kw)
    assert (per_gn >= per_lb - 1e-6).all()
    firm = resp[..., 1:].sum((1, 2))[v, k] >= 5
    assert firm.any()
    assert torch.allclose(gn[v, k][firm], lb["locs"][v, k][firm], atol=2e-3)


def test_projection_matches_camera_and_fov_option():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(10, 3, generator=g, dtype=torch.float64) * 4 - 2
    cam = torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64)
    look = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    a, da = P.project(pts, cam, look)
    b, db = camera.project(pts, cam, look)
    assert torch.allclose(a, b) and torch.allclose(da, db)
    ray = P.pixel_to_ray(a, cam, look)
    assert torch.allclose(ray, camera.pixel_to_ray(a, cam, look), atol=1e-12)
    # a wider field of view maps the same point closer to the image centre
    w, _ = P.project(pts, cam, look, math.radians(30.0))
    assert ((w - 128).abs() <= (a - 128).abs() + 1e-9).all()
    # analytic Jacobian = autograd
    f, right, up = camera.camera_frame(cam, look)
    mu = pts[0].clone().requires_grad_(True)
    pix, _, J = project_with_jacobian(mu, cam, f, right, up)
    rows = [torch.autograd.grad(pix[i], mu, retain_graph=True)[0] for i in range(2)]
    assert torch.allclose(J, torch.stack(rows), atol=1e-10)


def test_occam_factor_limits():
    lo = torch.tensor([-5.0, 0.0, -5.0], dtype=torch.float64)
    hi = torch.tensor([5.0, 1.0, 5.0], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    # a sharp posterior: the usual Laplace factor (2 pi)^{3/2} |H|^{-1/2}
    H = torch.diag(torch.tensor([1e4, 2e4, 3e4], dtype=torch.float64)).unsqueeze(0)
    want = 1.5 * math.log(2 * math.pi) - 0.5 * math.log(1e4 * 2e4 * 3e4)
    assert float(P.log_occam(H, mu, lo, hi)) == pytest.approx(want, rel=1e-9)
    # no information: the prior volume (log 100)
    assert float(P.log_occam(torch.zeros(1, 3, 3, dtype=torch.float64), mu, lo, hi)) == pytest.approx(
        math.log(100.0), rel=1e-9)
    # flat along one axis (a single view): sharp terms plus the chord along the flat axis
    H1 = torch.diag(torch.tensor([1e4, 0.0, 1e4], dtype=torch.float64)).unsqueeze(0)
    want = math.log(2 * math.pi) - 0.5 * math.log(1e8) + math.log(1.0)
    assert float(P.log_occam(H1, mu, lo, hi)) == pytest.approx(want, rel=1e-9)
    # the exact Hessian by autograd equals torch.autograd.functional.hessian
    video, mu2, *_ = _tiny()
    data = P.data_from_videos(parse_videos([video]))
    cats, active = torch.tensor([[0, 1]]), torch.tensor([[True, True]])
    vals = _values(mu2)
    _, resp = P.video_log_likelihood(data, vals, cats, active)
    v, k, kw = object_batch(data, resp, cats, active, vals)
    Hb = P.location_hessian(vals["locs"][v, k], **kw)

    def negq(x):
        kw0 = {key: (val[:1] if torch.is_tensor(val) and val.dim() and key != "sigma" else val)
               for key, val in kw.items()}
        kw0["views"] = {key: (val[:1] if torch.is_tensor(val) and val.dim() else val)
                        for key, val in kw["views"].items()}
        pix, _, _ = project_views(x.unsqueeze(0), kw0["views"])
        diff = kw0["u"] - pix.unsqueeze(2)
        return 0.5 * (kw0["g"] * (diff * diff).sum(-1)).sum() / kw0["sigma"] ** 2

    Hf = torch.autograd.functional.hessian(negq, vals["locs"][v[0], k[0]].clone())
    assert torch.allclose(Hb[0], Hf, rtol=1e-8, atol=1e-8)


def test_scale_prior_density_matches_pyro():
    sig = torch.tensor(3.7, dtype=torch.float64)
    ref = _scale_prior(3.0, 72.0, torch.float64).log_prob(sig)
    assert float(_scale_log_prior(sig, 3.0, 72.0)) == pytest.approx(float(ref), rel=1e-10)


def test_simulate_roundtrip_and_data_dict():
    sim = P.simulate(3, 6, seed=1, rates=[1, 1, 1, 1, 1], hallucination=[0.1] * 5)
    videos = parse_videos(sim)
    assert len(videos) == 3 and all(v.num_frames == 6 for v in videos)
    assert sim[0]["detector_truth"]["pixel_scale"] == 5.0
    data = P.data_from_videos(videos)
    V, T, D = data["centers"].shape[:3]
    assert (V, T) == (3, 6) and D >= 1
    assert data["score_bins"].min() >= 0 and data["score_bins"].max() < P.num_bins()
    assert int(data["det_mask"].sum()) == sum(len(d) for v in videos for d in v.detections)
    with pytest.raises(DataError):
        P.simulate(0, 5)


def test_params_json_roundtrip_and_validation():
    vals = P.prior_params()
    back = P.params_from_json(P.params_to_json(vals))
    for k in ("rates", "hallucination", "pixel_scale", "mark_real", "mark_hall"):
        assert torch.allclose(back[k], vals[k])
    bad = P.params_to_json(vals)
    bad["detection_rate"]["tv"] = -1.0
    with pytest.raises(DataError):
        P.params_from_json(bad)
    with pytest.raises(DataError):
        P.params_from_json({"detection_rate": {}})


def test_V_recovered_on_simulated_data():
    r_true = np.array([1.2, 0.8, 0.6, 1.0, 0.9])
    h_true = np.array([0.05, 0.15, 0.1, 0.2, 0.08])
    videos = parse_videos(P.simulate(40, 20, seed=7, rates=r_true, hallucination=h_true, pixel_scale=4.0))
    data = P.data_from_videos(videos)
    fit = P.fit_videos(data, mode="learn")
    r = fit.values["rates"].numpy()
    h = fit.values["hallucination"].numpy()
    assert np.abs(r - r_true).max() < 0.2, (r, r_true)
    assert np.abs(h - h_true).max() < 0.06, (h, h_true)
    assert float(fit.values["pixel_scale"]) == pytest.approx(4.0, rel=0.15)
    assert math.degrees(2 * float(fit.values["half_fov"])) == pytest.approx(55.0, abs=0.5)
    # the real marks are learned: confident scores are more likely for real detections
    assert (fit.values["mark_real"][:, -3:].sum(-1) > fit.values["mark_hall"][:, -3:].sum(-1)).all()
    # most true objects found, few false ones
    n_true = sum(len(v.gt_categories) for v in videos)
    assert abs(int(fit.active.sum()) - n_true) <= 0.15 * n_true
    # the search never lowered the EM objective within an EM phase
    ems = [t for t in fit.history if t["phase"] == "em"]
    assert all(math.isfinite(t["log_joint"]) for t in ems)


def test_truth_mode_and_fixed_mode():
    videos = parse_videos(P.simulate(6, 10, seed=2))
    data = P.data_from_videos(videos)
    from metagen_ppl.domain.metagen_data import batch_videos

    b = batch_videos(videos)
    fit = P.fit_videos(data, mode="truth", truth=(b.gt_categories, b.gt_positions, b.gt_mask))
    assert torch.equal(fit.active, b.gt_mask)
    assert torch.allclose(fit.values["locs"][b.gt_mask], b.gt_positions[b.gt_mask])
    fixed = P.fit_videos(data, mode="fixed", params=fit.values)
    for k in ("rates", "hallucination", "pixel_scale", "half_fov"):
        assert torch.equal(fixed.values[k], fit.values[k])
    with pytest.raises(DataError):
        P.fit_videos(data, mode="fixed")
    with pytest.raises(DataError):
        P.fit_videos(data, mode="nonsense")


def test_nuts_locations_smoke():
    video, mu, *_ = _tiny()
    data = P.data_from_videos(parse_videos([video]))
    vals = _values(mu)
    vals["half_fov"] = torch.tensor(camera.HALF_FOV, dtype=torch.float64)
    out = P.nuts_locations(data, vals, torch.tensor([[0, 1]]), torch.tensor([[True, True]]), num_samples=8,
                           warmup_steps=8)
    assert out["samples"].shape == (8, 2, 3)
    assert torch.isfinite(out["mean"]).all()


def test_generic_engine_location_step_agrees_with_gauss_newton():
    """The same structure search with the engine's generic LBFGS M-step for the locations (the
    Pyro model traced under enumeration) reaches the fast path's answer."""
    videos = parse_videos(P.simulate(5, 10, seed=4, rates=[1.2] * 5, hallucination=[0.05] * 5))
    data = P.data_from_videos(videos)
    a = P.fit_videos(data, max_objects=4)
    b = P.fit_videos(data, max_objects=4, location_step="lbfgs")
    assert torch.equal(a.active, b.active) and torch.equal(a.cats[a.active], b.cats[b.active])
    assert a.history[-1]["log_joint"] == pytest.approx(b.history[-1]["log_joint"], abs=0.05)
    assert torch.allclose(a.values["locs"][a.active], b.values["locs"][b.active], atol=5e-3)
    with pytest.raises(DataError):
        P.fit_videos(data, location_step="adam")


def test_existence_probabilities_equal_the_brute_force_score_difference():
    """pi_k = sigmoid(score(with k) - score(without k)) of the video's penalised score, each object removed in
    turn by hand; kept objects have pi > 1/2 and free slots 0."""
    from metagen_ppl.engine.structure import search_structure
    from metagen_ppl.models.projective.structure import ProjectiveSearch
    videos = parse_videos(P.simulate(6, 8, seed=5, rates=[1.0, 0.8, 0.6, 1.0, 0.9],
                                     hallucination=[0.05, 0.1, 0.05, 0.1, 0.05], pixel_scale=4.0))
    search = ProjectiveSearch(P.data_from_videos(videos), mode="learn", max_objects=4)
    search_structure(search, max_rounds=6)
    pi = search.existence_probabilities()
    assert bool(search.active.any())
    assert (pi[~search.active] == 0).all()
    assert (pi[search.active] > 0.5).all()
    _, _, resp, loglik, _ = search.estep()
    with_all, _ = search.scores(resp, loglik)
    log_odds = -search.propose_deaths().gain.reshape(search.active.shape)
    assert log_odds[search.active].min() < 30            # not every object saturated: the check has teeth
    for v, k in search.active.nonzero().tolist():
        search.active[v, k] = False
        _, _, resp_k, loglik_k, _ = search.estep()
        without, _ = search.scores(resp_k, loglik_k)
        search.active[v, k] = True
        # the batched removal and the removal by hand are the same computation up to float64 rounding
        # (the Occam factors of the other objects are evaluated at the responsibilities with k present,
        # as in the batched move; with well separated objects their change is below 1e-6)
        assert float(log_odds[v, k]) == pytest.approx(float(with_all[v] - without[v]), abs=1e-4)
        assert float(pi[v, k]) == pytest.approx(float(torch.sigmoid(with_all[v] - without[v])), abs=1e-9)
