"""The speed work of issue 13 (part 4) reuses computations without changing a number: the Gauss-Newton
location steps take the projection of the accepted points from their objective and, when the views are
frames of the exposure views (``views["frames"]``), project in the frames only; the M-step's statistics
take the E-step's pixels; the death proposals compute only the active objects' terms; the Occam factors
of an unchanged state are memoised. Each is checked bitwise against the direct computation."""

from __future__ import annotations

import math

import torch

from metagen_ppl.models.projective.mstep import (gauss_newton_locations, index_views, location_objective,
                                                 views_of)


def _simulated_search(seed=2, videos=4, frames=6, max_objects=3):
    from metagen_ppl.domain.metagen_data import parse_videos
    from metagen_ppl.models.projective.generative import data_from_videos
    from metagen_ppl.models.projective.simulate import simulate_file
    from metagen_ppl.models.projective.structure import ProjectiveSearch

    data = data_from_videos(parse_videos(simulate_file(videos, num_frames=frames, seed=seed)))
    return ProjectiveSearch(data, max_objects=max_objects), data


def _location_problem(seed=0, N=7, T=5, A=9):
    """Objects (N, 3) seen from T frames each; A detection views, each one of the frames."""
    from metagen_ppl.domain.camera import camera_frame

    g0 = torch.Generator().manual_seed(seed)
    dt = torch.float64
    cams = torch.rand(N, T, 3, generator=g0, dtype=dt) * torch.tensor([4.0, 1.0, 4.0], dtype=dt) + \
        torch.tensor([-2.0, 0.5, -6.0], dtype=dt)
    looks = cams + torch.tensor([0.0, 0.0, 5.0], dtype=dt) + 0.5 * torch.randn(N, T, 3, generator=g0, dtype=dt)
    f, right, up = camera_frame(cams, looks)
    half = torch.tensor(0.5, dtype=dt)
    expo = views_of(cams, f, right, up, half)
    frames = torch.randint(0, T, (N, A), generator=g0)
    n = torch.arange(N)[:, None]
    views = dict(views_of(cams[n, frames], f[n, frames], right[n, frames], up[n, frames], half), frames=frames)
    truth = torch.randn(N, 3, generator=g0, dtype=dt) * 0.5 + torch.tensor([0.0, 1.0, 0.0], dtype=dt)
    from metagen_ppl.models.projective.mstep import project_views
    pix, _, _ = project_views(truth, {k: v for k, v in views.items() if k != "frames"})
    u = (pix + 3.0 * torch.randn(pix.shape, generator=g0, dtype=dt)).unsqueeze(2)      # (N,A,1,2)
    g = torch.rand(N, A, 1, generator=g0, dtype=dt)
    mu0 = truth + 0.3 * torch.randn(N, 3, generator=g0, dtype=dt)
    lo, hi = torch.tensor([-5.0, 0.0, -5.0], dtype=dt), torch.tensor([5.0, 3.0, 5.0], dtype=dt)
    kw = dict(u=u, g=g, rate=torch.full((N,), 0.3, dtype=dt), sigma=torch.tensor(4.0, dtype=dt),
              expo_views=expo, expo_mask=torch.rand(N, T, generator=g0) > 0.2)
    return mu0, views, kw, lo, hi


def test_gauss_newton_in_the_frames_equals_in_the_views():
    for seed in range(4):
        mu0, views, kw, lo, hi = _location_problem(seed)
        plain = {k: v for k, v in views.items() if k != "frames"}
        a = gauss_newton_locations(mu0, views=views, lo=lo, hi=hi, iters=6, **kw)
        b = gauss_newton_locations(mu0, views=plain, lo=lo, hi=hi, iters=6, **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], mu0)                                     # it moved
        # the value it returns is the objective at the point it returns (reused projections are exact)
        assert torch.equal(a[1], location_objective(a[0], views=plain, **kw))
        assert torch.equal(location_objective(a[0], views=views, **kw), a[1])
        # another half field of view in the exposure views: not linked, still the same result as unlinked
        other = dict(kw, expo_views=dict(kw["expo_views"], half=torch.tensor(0.45, dtype=torch.float64)))
        c = gauss_newton_locations(mu0, views=views, lo=lo, hi=hi, iters=6, **other)
        d = gauss_newton_locations(mu0, views=plain, lo=lo, hi=hi, iters=6, **other)
        assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])


def test_group_projection_equals_projecting_the_views():
    from metagen_ppl.models.projective.mstep import project_views

    search, _ = _simulated_search()
    grp = search.grp
    gi = torch.arange(grp["t"].shape[0])
    mu = torch.randn(len(gi), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + \
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    pix, depth = search._group_projection(mu, gi)
    ref = {k: v for k, v in index_views(grp["views"], gi).items() if k != "frames"}
    rpix, rdepth, _ = project_views(mu, ref)
    assert torch.equal(pix, rpix) and torch.equal(depth, rdepth)


def test_mstep_statistics_from_the_estep_pixels_are_the_same():
    from metagen_ppl.models.projective.estep import joint_log_terms
    from metagen_ppl.models.detector.estep import detection_posterior
    from metagen_ppl.models.projective.mstep import sufficient_statistics

    search, data = _simulated_search()
    search.active[:, :2] = True
    extras = {}
    joint, _, vis = joint_log_terms(data, search.values, search.cats, search.active, search.C, search.noise,
                                    extras=extras)
    _, resp = detection_posterior(joint, data["det_mask"])
    kw = dict(cats=search.cats, active=search.active, num_categories=search.C, pixel_noise=search.noise)
    a = sufficient_statistics(data, {"z": resp}, search.values, search.K, **kw)
    b = sufficient_statistics(data, {"z": resp}, search.values, search.K,
                              pixels=(extras["pixels"], vis, extras["sq"]), **kw)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_death_gains_equal_the_full_computation():
    search, data = _simulated_search(max_objects=4)
    search.active[:, :2] = True
    search.active[0, 3] = True
    search.active[1, :] = False
    moves = search.propose_deaths()
    joint, lse, resp, _, vis = search.estep()
    V, K = search.active.shape
    zero = torch.zeros((), dtype=search.dtype)
    drop = torch.eye(K + 1, dtype=torch.bool)[1:]
    jk = torch.where(drop[:, None, None, None, :], torch.full((), -math.inf, dtype=search.dtype), joint.unsqueeze(0))
    lse_k = torch.where(data["det_mask"], jk.logsumexp(-1), zero)
    expo = (vis & search.active[:, None, :]).to(search.dtype).sum(1) * search.values["rates"][search.cats]
    dll = (lse_k - lse.unsqueeze(0)).sum((-1, -2)).T + expo
    gain = torch.where(search.active, dll - (search._per_object_prior() + search._occam(resp)),
                       torch.full((), -math.inf, dtype=search.dtype))
    assert torch.equal(moves.gain, gain.reshape(-1))


def test_occam_memo_follows_the_state():
    search, _ = _simulated_search()
    search.active[:, 0] = True
    resp = search.estep()[2]
    first = search._occam(resp)
    assert search._occam(resp) is first                                   # unchanged: the memo
    search.values = dict(search.values, locs=search.values["locs"] + 0.05)
    resp2 = search.estep()[2]
    second = search._occam(resp2)
    assert second is not first
    search.active[0, 1] = True                                            # in place: recomputed
    third = search._occam(search.estep()[2])
    assert third is not second
    third.mul_(2)                                                         # changed by a caller: recomputed
    assert search._occam(search.estep()[2]) is not third


def test_log_likelihood_without_responsibilities_is_the_same():
    from metagen_ppl.models.projective.estep import video_log_likelihood

    search, data = _simulated_search()
    search.active[:, :2] = True
    a, resp = video_log_likelihood(data, search.values, search.cats, search.active, search.C, search.noise)
    b, none = video_log_likelihood(data, search.values, search.cats, search.active, search.C, search.noise,
                                   responsibilities=False)
    assert torch.equal(a, b) and none is None and resp is not None


def test_squared_residuals_are_the_summed_squares():
    from metagen_ppl.models.projective.generative import squared_residuals

    g0 = torch.Generator().manual_seed(3)
    for scale in (1e-3, 1.0, 300.0, 1e8):
        u = torch.randn(5, 7, 4, 1, 2, generator=g0, dtype=torch.float64) * scale
        pix = torch.randn(5, 7, 1, 6, 2, generator=g0, dtype=torch.float64) * scale
        diff = u - pix
        assert torch.equal(squared_residuals(u, pix), (diff * diff).sum(-1))
    u = torch.tensor([[0.0, -0.0], [float("inf"), 1.0], [float("nan"), 0.0]], dtype=torch.float64)
    pix = torch.tensor([[-0.0, 0.0], [1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    diff = u - pix
    assert torch.equal(squared_residuals(u, pix)[:2], (diff * diff).sum(-1)[:2])
    assert bool(squared_residuals(u, pix)[2].isnan())
