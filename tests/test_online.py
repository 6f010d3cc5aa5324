"""Online (stepwise) EM: the engine's loop against closed forms, its checkpoints, and the projective model's
online fit against its batch fit on simulated videos."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metagen_ppl.engine.checkpoint import FitInterrupted
from metagen_ppl.engine.online import StepSchedule, run_online
from metagen_ppl.errors import MetagenError


def _poisson_units(n=30, seed=0):
    g = np.random.default_rng(seed)
    return [g.poisson(3.0, size=int(g.integers(1, 8))) for _ in range(n)]


def _poisson_model(units, seen):
    """Units of Poisson counts; theta = the rate. infer records which theta each unit saw."""
    def infer(i, params):
        seen.append(float(params["rate"]))
        x = torch.tensor(units[i], dtype=torch.float64)
        return {"stats": {"sum": x.sum(), "n": torch.tensor(float(len(x)), dtype=torch.float64)}}

    def mstep(S, n):
        return {"rate": (n * S["sum"]) / (n * S["n"])}
    return infer, (lambda st: st["stats"]), mstep


def test_kappa_one_is_the_batch_estimate_of_the_units_seen():
    units = _poisson_units()
    seen = []
    infer, stats, mstep = _poisson_model(units, seen)
    out = run_online(len(units), infer, stats, mstep, {"rate": torch.tensor(1.0, dtype=torch.float64)},
                     schedule=StepSchedule(1.0, 0.0))
    for i in range(len(units)):
        batch = sum(u.sum() for u in units[:i + 1]) / sum(len(u) for u in units[:i + 1])
        # eta_i = 1/i: the running mean of the statistics is their sum / i exactly (float64 rounding)
        assert float(out.params[i]["rate"]) == pytest.approx(batch, rel=1e-12)
    assert seen[0] == 1.0 and seen[1:] == [float(p["rate"]) for p in out.params[:-1]]
    assert out.steps[:3] == [1.0, 0.5, pytest.approx(1 / 3)]


def test_step_schedule_values_and_validation():
    s = StepSchedule(0.7, 2.0)
    assert s(1) == 1.0 and s(2) == pytest.approx(4 ** -0.7) and s(10) == pytest.approx(12 ** -0.7)
    for bad in (dict(kappa=0.5), dict(kappa=1.5), dict(t0=-1.0), dict(kappa=float("nan"))):
        with pytest.raises(MetagenError, match="step schedule"):
            StepSchedule(**bad)


def test_stepwise_mix_by_hand():
    units = [[1], [4], [10]]
    infer, stats, mstep = _poisson_model(units, [])
    out = run_online(3, infer, stats, mstep, {"rate": torch.tensor(1.0, dtype=torch.float64)},
                     schedule=StepSchedule(0.6, 1.0))
    e2, e3 = 3 ** -0.6, 4 ** -0.6
    s_sum = (1 - e3) * ((1 - e2) * 1 + e2 * 4) + e3 * 10         # S_3 of the sums (each unit has n = 1)
    assert float(out.statistics["sum"]) == pytest.approx(s_sum, rel=1e-12)
    assert float(out.params[-1]["rate"]) == pytest.approx(s_sum, rel=1e-12)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    units = _poisson_units(12, seed=1)
    infer, stats, mstep = _poisson_model(units, [])
    p0 = {"rate": torch.tensor(1.0, dtype=torch.float64)}
    full = run_online(12, infer, stats, mstep, p0, schedule=StepSchedule(0.8, 1.0))
    ck = tmp_path / "online.json"

    def infer_stop(i, params):
        if i == 7:
            raise KeyboardInterrupt
        return infer(i, params)
    with pytest.raises(FitInterrupted):
        run_online(12, infer_stop, stats, mstep, p0, schedule=StepSchedule(0.8, 1.0), checkpoint=ck)
    calls = []

    def infer_count(i, params):
        calls.append(i)
        return infer(i, params)
    res = run_online(12, infer_count, stats, mstep, p0, schedule=StepSchedule(0.8, 1.0), checkpoint=ck, resume=True)
    assert calls == list(range(7, 12)) and res.resumed_from == 7
    assert [float(p["rate"]) for p in res.params] == [float(p["rate"]) for p in full.params]
    # another schedule is other settings: refused
    from metagen_ppl.engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="other settings"):
        run_online(12, infer, stats, mstep, p0, schedule=StepSchedule(1.0, 0.0), checkpoint=ck, resume=True)


def test_statistics_keys_must_not_change():
    def infer(i, params):
        return {"a": torch.tensor(1.0)} if i == 0 else {"b": torch.tensor(1.0)}
    with pytest.raises(MetagenError, match="same keys"):
        run_online(2, infer, lambda s: s, lambda S, n: {}, {})


def test_projective_online_fit_approaches_the_batch_fit():
    from metagen_ppl.domain.metagen_data import parse_videos
    from metagen_ppl.models import projective as P
    from metagen_ppl.models.projective.mstep import closed_form_mstep, mstep_from_statistics, sufficient_statistics
    from metagen_ppl.models.projective.online import fit_videos_online
    r_true = np.array([1.2, 0.8, 0.6, 1.0, 0.9])
    h_true = np.array([0.05, 0.15, 0.1, 0.2, 0.08])
    videos = parse_videos(P.simulate(30, 15, seed=7, rates=r_true, hallucination=h_true, pixel_scale=4.0))
    data = P.data_from_videos(videos)
    batch = P.fit_videos(data, mode="learn")
    # the batch M-step is the M-step of the summed statistics (float64: the same arithmetic)
    stats = sufficient_statistics(data, {"z": batch.resp}, batch.values, batch.active.shape[1], cats=batch.cats,
                                  active=batch.active)
    direct = closed_form_mstep(data, {"z": batch.resp}, batch.values, batch.active.shape[1], cats=batch.cats,
                               active=batch.active)
    for k, v in mstep_from_statistics(stats).items():
        assert torch.equal(v, direct[k]), k
    online = fit_videos_online(data)
    assert len(online.objects) == 30 and len(online.params) == 30
    r_on, r_b = online.values["rates"].numpy(), batch.values["rates"].numpy()
    h_on = online.values["hallucination"].numpy()
    # V learned online from 30 videos seen once each: within 0.25 of the truth and of the batch estimate
    # (the batch fit itself is within 0.2 of the truth on such data, test_projective.py)
    assert np.abs(r_on - r_true).max() < 0.25 and np.abs(r_on - r_b).max() < 0.25, (r_on, r_b)
    assert np.abs(h_on - h_true).max() < 0.08, h_on
    assert math.degrees(2 * float(online.values["half_fov"])) == pytest.approx(55.0, abs=1.0)
    # the later videos, fitted with a learned V, find about as many objects as the batch fit
    n_on = sum(len(o) for o in online.objects[15:])
    n_b = sum(len(o) for o in batch.objects()[15:])
    assert abs(n_on - n_b) <= 0.15 * n_b + 1
    assert all(0.5 < p <= 1.0 for ex in online.existence for p in ex)
