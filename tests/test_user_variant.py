"""The README's user-written structured variant (Student-t pixel noise) against the documented hooks only.

The variant file is the README's block, written to a temporary directory and
loaded by path like any user's model. It must give the engine's E-step, the
projective model's structure search and ``metagen-ppl evaluate --model FILE``
everything they need, and its noise must really be used.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from metagen_ppl.apps.cli.main import main
from metagen_ppl.domain.metagen_data import batch_videos, parse_videos
from metagen_ppl.domain.objects import object_metrics
from metagen_ppl.engine.enumeration import EnumeratedModel
from metagen_ppl.engine.registry import load_model
from metagen_ppl.models import projective as P
from metagen_ppl.models.projective.mstep import gauss_newton_locations, location_objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = next((d for d in ("/work/shared/data/metagen2021", os.path.join(ROOT, "..", "shared", "data", "metagen2021"))
             if os.path.isfile(os.path.join(d, "data_labelled_retinanet.json"))), None)


def _readme_block() -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    marker = "<!-- README example: student_t_pixels.py"
    assert marker in text
    return text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    path = tmp_path_factory.mktemp("variant") / "student_t_pixels.py"
    path.write_text(_readme_block())
    return load_model(str(path)), str(path)


@pytest.fixture(scope="module")
def heavy_tailed(variant):
    """Videos whose detections have Student-t (df = 1.5) pixel noise: many far from their object."""
    spec, _ = variant
    noise = type(spec.default_options["pixel_noise"])(df=1.5)
    videos = parse_videos(P.simulate(10, 12, seed=7, pixel_scale=4.0, rates=[1.2, 1.0, 1.1, 0.9, 1.0],
                                     hallucination=[0.05] * 5, pixel_noise=noise))
    return videos, P.data_from_videos(videos)


def _truth(videos):
    b = batch_videos(videos)
    return b.gt_categories, b.gt_positions, b.gt_mask


def test_the_readme_variant_is_about_fifty_lines_of_hooks(variant):
    spec, _ = variant
    assert len(_readme_block().splitlines()) <= 60
    assert spec.name == "student_t_pixels" and spec.model is P.model and spec.estep is P.estep
    assert repr(spec.default_options["pixel_noise"]) == "StudentTPixelNoise(df=4.0)"


def test_variant_estep_equals_the_engine_enumeration(variant, heavy_tailed):
    """The model's batched E-step with the variant's noise equals Pyro's enumeration of the same Pyro model
    (whose ``u`` site uses the same noise): float64, agreement to round-off (1e-10 relative)."""
    spec, _ = variant
    videos, data = heavy_tailed
    cats, pos, mask = _truth(videos)
    K = cats.shape[1]
    options = dict(spec.default_options, cats=cats, active=mask, half_fov=torch.tensor(0.49, dtype=torch.float64))
    params = dict(P.prior_params(dtype=torch.float64), locs=pos.double() + 0.05)
    params["pixel_scale"] = torch.tensor(3.0, dtype=torch.float64)
    fast = spec.estep(data, params, K, **options)
    ref = EnumeratedModel(spec.model, data, K, options).estep(params)
    assert fast.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-10)
    assert fast.log_joint == pytest.approx(ref.log_joint, rel=1e-10)
    m = data["det_mask"]
    assert torch.allclose(fast.marginals["z"][m], ref.marginals["z"].reshape(fast.marginals["z"].shape)[m],
                          atol=1e-10)
    gauss = P.estep(data, params, K, **dict(options, pixel_noise=None))
    assert abs(gauss.log_likelihood - fast.log_likelihood) > 1.0       # the noise is really the variant's


def test_irls_location_step_and_mm_scale_step_never_lower_q(variant, heavy_tailed):
    spec, _ = variant
    noise = spec.default_options["pixel_noise"]
    videos, data = heavy_tailed
    cats, pos, mask = _truth(videos)
    values = dict(P.prior_params(dtype=torch.float64), locs=pos.double() + 0.3)
    values["pixel_scale"] = torch.tensor(3.0, dtype=torch.float64)
    fit = P.estep(data, values, cats.shape[1], cats=cats, active=mask, pixel_noise=noise)
    from metagen_ppl.models.projective.mstep import object_batch

    v, k, kw = object_batch(data, fit.marginals["z"], cats, mask, values, noise)
    lo, hi = data["box"][0], data["box"][1]
    before = location_objective(values["locs"][v, k], **{a: b for a, b in kw.items() if a != "noise"}, noise=noise)
    mu, after = gauss_newton_locations(values["locs"][v, k], lo=lo, hi=hi, iters=6, **kw)
    assert bool((after >= before).all()) and float((after - before).sum()) > 1.0
    # the scale's MM step raises Q's scale part (prior included)
    g = torch.rand(500, dtype=torch.float64)
    sq = torch.distributions.Exponential(torch.tensor(0.02, dtype=torch.float64)).sample((500,))
    old = torch.tensor(2.0, dtype=torch.float64)
    new = noise.scale_mstep(g, sq, old, 3.0, 72.0)
    from metagen_ppl.models.projective.generative import _scale_log_prior

    def q(s):
        return float((g * noise.log_density(sq, s)).sum() + _scale_log_prior(s, 3.0, 72.0))

    assert q(new) > q(old)
    assert q(noise.scale_mstep(g, sq, new, 3.0, 72.0)) >= q(new)


def test_variant_fits_heavy_tailed_detections_better_than_gaussian(variant, heavy_tailed):
    """On Student-t detections the variant's fit has a higher maximised log likelihood than the Gaussian
    model's and finds the objects at least as well (both start from nothing: structure search included)."""
    spec, _ = variant
    videos, data = heavy_tailed
    t_fit = spec.module.fit_videos(data, max_objects=4, **spec.default_options)
    g_fit = P.fit_videos(data, max_objects=4)
    assert t_fit.info["learned"] and "StudentTPixelNoise" in repr(spec.default_options["pixel_noise"])
    # measured: 71 nats better (seeds 8, 9 of the same design: 25, 25); the margin leaves room for round-off
    # deciding a birth differently on another platform
    assert t_fit.log_likelihood > g_fit.log_likelihood + 20.0
    truth = [{"path": v.path, "objects": [{"category_name": "chair plant tv umbrella bowl".split()[int(c)],
                                           "position": p.tolist()} for c, p in zip(v.gt_categories, v.gt_positions)]}
             for v in videos]

    def objects(fit):
        return [{"path": v.path, "objects": [{"category_name": "chair plant tv umbrella bowl".split()[c],
                                              "position": p} for c, p in o]} for v, o in zip(videos, fit.objects())]

    f1_t, f1_g = object_metrics(objects(t_fit), truth)["f1"], object_metrics(objects(g_fit), truth)["f1"]
    assert f1_t >= 0.8 and f1_t >= f1_g - 0.05, (f1_t, f1_g)
    ems = [h for h in t_fit.history if h["phase"] == "em"]
    assert ems and all(math.isfinite(h["log_joint"]) for h in ems)


def test_evaluate_runs_the_variant_file(variant, heavy_tailed, tmp_path, capsys):
    _, path = variant
    videos, _ = heavy_tailed
    data = tmp_path / "videos.json"
    data.write_text(json.dumps(P.simulate(6, 10, seed=3, pixel_noise=variant[0].default_options["pixel_noise"])))
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", path, "--data", str(data), "--out", str(out), "--plots", "1",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "student_t_pixels"
    assert metrics["splits"]["all"]["jaccard"]["ours"] >= 0.6
    meta = json.loads((out / "metacognition.json").read_text())
    assert meta["learned"]["pixel_scale"] > 0
    assert len(json.loads((out / "world_states.json").read_text())) == 6
    # a resumed run of the finished evaluation reuses it (the variant's settings are part of the fingerprint)
    assert main(["evaluate", "--model", path, "--data", str(data), "--out", str(out), "--plots", "1",
                 "--no-progress", "--resume"]) == 0
    # the Gaussian model's checkpoints are not mistaken for the variant's
    code = main(["evaluate", "--data", str(data), "--out", str(out), "--plots", "1", "--no-progress", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint" in err, err


def test_evaluate_refuses_a_model_without_the_video_hooks(tmp_path, capsys):
    path = tmp_path / "not_video.py"
    path.write_text("from metagen_ppl.models.baseline import *  # noqa\n")
    code = main(["evaluate", "--model", str(path), "--data", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "cannot be evaluated on videos" in err[0] and "fit_videos" in err[0] and "projective" in err[0]


@pytest.mark.skipif(REAL is None, reason="the MetaGen detection data (../shared/data/metagen2021/, MIT licence) "
                                         "is not in this checkout")
def test_variant_on_the_shared_real_detections(variant, tmp_path, capsys):
    """The README's command on the real RetinaNet detections (measured split B: 0.732, Gaussian 0.725)."""
    _, path = variant
    out = tmp_path / "eval-t"
    code = main(["evaluate", "--model", path, "--data", os.path.join(REAL, "data_labelled_retinanet.json"),
                 "--out", str(out), "--plots", "0", "--no-lesioned", "--no-ground-truth-V", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"]["B"]["jaccard"]["ours"] >= 0.70
