"""Bad input everywhere (issue 6): every command and public function gets what users get wrong.

Each CLI case must end with exit code 2 and exactly one stderr line
``metagen-ppl: error: ...`` that names the problem and where it is (the file;
for multi-scene and MetaGen video files also the scene/video and frame), with
no traceback unless ``--debug``. Each public-function case must raise a
:class:`~metagen_ppl.errors.MetagenError` subclass (not a bare torch or Python
error) whose message names the problem. Inputs a model can take (scenes or
frames without detections, detections of other COCO ids) must NOT error.

The CLI runs in-process through ``metagen_ppl.apps.cli.main`` (fast); two tests run
it as a subprocess end to end. Every data file here is hand-made and tiny.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from metagen_ppl.apps.cli.main import main
from metagen_ppl.errors import DataError, MetagenError, ModelError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data", "metagen2021", "data_labelled_retinanet.json")
F64 = torch.float64
CATS = ["chair", "plant", "tv", "umbrella", "bowl"]


# --------------------------------------------------------------------------- helpers
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    """Exit 2, one stderr line ``metagen-ppl: error: ...`` containing every needle, no traceback."""
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("metagen-ppl: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# Single-scene exchange format (fit / simulate).
POINTS = [[0, 0, 0], [0.1, 0, 0], [1, 1, 1], [1.1, 1, 1], [5, 5, 5], [6, 6, 6]]
GOOD = {"observations": POINTS, "num_objects": 2}
GOOD_CAT = dict(GOOD, categories=[0, 0, 1, 1, 2, 2])


def with_(base, **fields):
    out = copy.deepcopy(base)
    out.update(fields)
    return out


def without(base, key):
    out = copy.deepcopy(base)
    out.pop(key)
    return out


# Multi-scene 3D format (metacognition): 2 scenes x 2 frames.
def scenes():
    def frame(dets):
        return {"detections": {"labels": [d[0] for d in dets], "position": [list(d[1]) for d in dets],
                               "scores": [0.9] * len(dets)}}
    a = [("chair", (1.0, 0.2, 1.0)), (62, (1.1, 0.2, 0.9)), ("tv", (-2.0, 0.3, 2.0))]
    b = [(64, (0.0, 0.2, -3.0)), ("plant", (0.1, 0.2, -3.1))]
    return [{"path": "000", "views": [frame(a), frame(a[:2])],
             "labels": [{"category_name": "chair", "position": [1.0, 0.2, 1.0]}]},
            {"path": "001", "views": [frame(b), frame(b)],
             "labels": [{"category_name": "plant", "position": [0.0, 0.2, -3.0]}]}]


# MetaGen real-data format (evaluate): 2 videos x 3 frames, a camera per frame, 2D detections.
def view(dets=((0.9, 62, (128.0, 128.0)),), cam=(4.0, 2.0, 0.0), look=(0.0, 0.5, 0.0)):
    return {"camera": dict(zip("xyz", cam)), "lookat": dict(zip("xyz", look)),
            "detections": {"scores": [d[0] for d in dets], "labels": [d[1] for d in dets],
                           "center": [list(d[2]) for d in dets],
                           "top_left": [[d[2][0] - 5, d[2][1] - 5] for d in dets],
                           "bottom_right": [[d[2][0] + 5, d[2][1] + 5] for d in dets]}}


def videos():
    return [{"path": "000", "views": [view(), view(), view()],
             "labels": [{"category_name": "chair", "position": [0.0, 0.3, 0.0]}]},
            {"path": "001", "views": [view(((0.8, 72, (100.0, 120.0)),)), view(), view()],
             "labels": [{"category_name": "tv", "position": [0.0, 0.5, 0.3]}]}]


def mutated(build, fn):
    obj = build()
    fn(obj)
    return obj


FIT_FAST = ["--num-inits", 1, "--max-iter", 2]
META_FAST = ["--max-rounds", 1, "--max-iter", 2, "--max-objects", 2]
EVAL_FAST = ["--plots", 0, "--no-lesioned", "--no-ground-truth-V", "--max-objects", 2]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- fit: the data file
DEEP = "[" * 100_000 + "]" * 100_000
FIT_FILE_CASES = [
    ("empty-file", "", [], ["is empty"]),
    ("whitespace-only", " \n\t \n", [], ["is empty", "whitespace"]),
    ("not-json", "hello", [], ["not valid JSON", "line 1 column 1"]),
    ("truncated-json", '{"observations": [[1, 2, 3],', [], ["not valid JSON", "line 1"]),
    ("nested-too-deep", DEEP, [], ["nested too deeply"]),
    ("not-utf8", b"\xff\xfe\x00{", [], ["not UTF-8"]),
    ("top-level-list", "[[1, 2, 3]]", ["-K", 1], ["JSON object", "got list"]),
    ("top-level-string", '"abc"', ["-K", 1], ["JSON object", "got str"]),
    ("video-list-given-to-fit", json.dumps(videos()), ["-K", 1], ["got list", "metagen-ppl evaluate"]),
    ("missing-observations", {"points": POINTS}, ["-K", 1], ["no 'observations'"]),
    ("observations-dict", {"observations": {"a": 1}}, ["-K", 1], ["non-empty list", "got dict"]),
    ("zero-observations", {"observations": []}, ["-K", 1], ["non-empty list", "empty list"]),
    ("ragged-rows", with_(GOOD, observations=[[0, 0, 0], [1, 1]]), [], ["row 1 has 2 coordinates"]),
    ("2d-rows", with_(GOOD, observations=[[0, 0], [1, 1]]), [], ["3 coordinates", "row 0 has 2"]),
    ("4d-rows", with_(GOOD, observations=[[0, 0, 0, 0], [1, 1, 1, 1]]), [], ["3 coordinates", "row 0 has 4"]),
    ("scalar-rows", with_(GOOD, observations=[1, 2, 3]), [], ["row 0 must be a non-empty list"]),
    ("empty-row", with_(GOOD, observations=[[0, 0, 0], []]), [], ["row 1 must be a non-empty list"]),
    ("string-coordinate", with_(GOOD, observations=[[0, 0, "a"], [1, 1, 1]]), [],
     ["row 0 column 2 is not a number"]),
    ("bool-coordinate", with_(GOOD, observations=[[True, 0, 0], [1, 1, 1]]), [],
     ["row 0 column 0 is not a number"]),
    ("null-coordinate", with_(GOOD, observations=[[0, None, 0], [1, 1, 1]]), [],
     ["row 0 column 1 is not a number"]),
    ("NaN", '{"observations": [[0, 0, 0], [1, NaN, 1]], "num_objects": 1}', [], ["row 1 contains nan", "column 1"]),
    ("Infinity", '{"observations": [[0, 0, Infinity], [1, 1, 1]], "num_objects": 1}', [], ["row 0 contains inf"]),
    ("-Infinity", '{"observations": [[0, 0, 0], [-Infinity, 1, 1]], "num_objects": 1}', [],
     ["row 1 contains -inf", "column 0"]),
    ("1e400", '{"observations": [[0, 0, 0], [1, 1, 1e400]], "num_objects": 1}', [], ["row 1 contains inf"]),
    ("huge-integer", '{"observations": [[0, 0, 0], [1, 1, 1%s]], "num_objects": 1}' % ("0" * 400), [],
     ["row 1 contains inf"]),
    ("num_objects-0", with_(GOOD, num_objects=0), [], ["'num_objects' must be at least 1"]),
    ("num_objects-negative", with_(GOOD, num_objects=-3), [], ["'num_objects' must be at least 1, got -3"]),
    ("num_objects-larger-than-N", with_(GOOD, num_objects=9), [], ["'num_objects'", "exceeds the 6 observations"]),
    ("num_objects-float", with_(GOOD, num_objects=1.5), [], ["'num_objects' must be an integer"]),
    ("num_objects-bool", with_(GOOD, num_objects=True), [], ["'num_objects' must be an integer"]),
    ("num_objects-string", with_(GOOD, num_objects="2"), [], ["'num_objects' must be an integer"]),
    ("num_objects-absent", without(GOOD, "num_objects"), [], ["give --num-objects"]),
    ("categories-not-list", with_(GOOD, categories=3), [], ["'categories' must be a list"]),
    ("categories-wrong-length", with_(GOOD, categories=[0, 1]), [], ["'categories' has 2 entries", "6 observations"]),
    ("categories-negative", with_(GOOD, categories=[0, 1, -1, 0, 0, 0]), [], ["category 2 is -1"]),
    ("categories-float", with_(GOOD, categories=[0, 1, 0.5, 0, 0, 0]), [], ["category 2 must be", "0.5"]),
    ("categories-name", with_(GOOD, categories=[0, 1, "chair", 0, 0, 0]), [], ["category 2 must be", "'chair'"]),
]


@pytest.mark.parametrize("content, extra, needles", [c[1:] for c in FIT_FILE_CASES],
                         ids=[c[0] for c in FIT_FILE_CASES])
def test_fit_rejects_bad_data_file(tmp_path, capsys, content, extra, needles):
    path = write(tmp_path, "data.json", content)
    code, _, err = run(capsys, "fit", "--data", path, *FIT_FAST, *extra)
    assert_one_line_error(code, err, *needles)
    assert "data.json" in err  # the file is named


# The same checks hold whatever the inference method: data problems are found before any fitting.
METHOD_ARGS = {"em": FIT_FAST, "svi": ["--num-steps", 2], "svi-normal": ["--num-steps", 2],
               "mcmc": ["--num-samples", 2, "--warmup", 1, "--num-chains", 1]}
PER_METHOD_CASES = [
    ("NaN", '{"observations": [[0, 0, 0], [1, NaN, 1]], "num_objects": 1}', [], ["data.json", "contains nan"]),
    ("zero-observations", {"observations": [], "num_objects": 1}, [], ["data.json", "empty list"]),
    ("K-larger-than-N", GOOD, ["-K", 7], ["--num-objects = 7 exceeds the 6 observations", "data.json"]),
    ("K-zero", GOOD, ["-K", 0], ["--num-objects must be at least 1"]),
    ("negative-scale", GOOD, ["-O", "scale=-1"], ["--option scale=-1", "> 0"]),
    ("NaN-scale", GOOD, ["-O", "scale=NaN"], ["--option scale=nan", "finite"]),
    ("weights-wrong-length", GOOD, ["-O", "weights=[1.0]"], ["weights has 1 entries", "2 objects"]),
    ("categorical-category-out-of-range", GOOD_CAT, ["--model", "categorical", "-O", "num_categories=2"],
     ["data.json", "out of range", "0..1"]),
]


@pytest.mark.parametrize("method", list(METHOD_ARGS))
@pytest.mark.parametrize("content, extra, needles", [c[1:] for c in PER_METHOD_CASES],
                         ids=[c[0] for c in PER_METHOD_CASES])
def test_fit_rejects_bad_input_for_every_method(tmp_path, capsys, method, content, extra, needles):
    path = write(tmp_path, "data.json", content)
    code, _, err = run(capsys, "fit", "--method", method, "--data", path, *METHOD_ARGS[method], *extra)
    assert_one_line_error(code, err, *needles)


# --------------------------------------------------------------------------- fit: options, arguments, paths
FIT_ARG_CASES = [
    # model options (-O)
    ("option-no-equals", ["-O", "scale"], ["--option expects key=value", "'scale'"]),
    ("option-no-key", ["-O", "=3"], ["--option expects key=value"]),
    ("option-unknown-key", ["-O", "bogus=3"], ["no option 'bogus'", "its options are"]),
    ("option-reserved-key", ["-O", "num_objects=3"], ["not allowed", "--num-objects"]),
    ("scale-zero", ["-O", "scale=0"], ["--option scale=0", "> 0"]),
    ("scale-infinity", ["-O", "scale=Infinity"], ["--option scale=inf", "finite"]),
    ("scale-string", ["-O", "scale=abc"], ["--option scale='abc'", "must be a number"]),
    ("weights-not-summing-to-1", ["-O", "weights=[0.5,0.6]"], ["weights=[0.5, 0.6]", "sum to 1"]),
    ("weights-negative", ["-O", "weights=[-0.5,1.5]"], ["weights", "non-negative"]),
    ("loc_prior_scale-negative", ["-O", "loc_prior_scale=-1"], ["--option loc_prior_scale=-1", "> 0"]),
    ("scale_prior_shape-negative", ["-O", "scale_prior_shape=-1"], ["scale_prior_shape=-1", "> 0"]),
    ("weight_concentration-zero", ["-O", "weight_concentration=0"], ["weight_concentration=0", "> 0"]),
    # numeric arguments
    ("K-negative", ["-K", -2], ["--num-objects must be at least 1, got -2"]),
    ("K-not-int", ["-K", "x"], ["--num-objects", "invalid int value: 'x'"]),
    ("method-unknown", ["--method", "foo"], ["--method", "invalid choice: 'foo'"]),
    ("dtype-unknown", ["--dtype", "float16"], ["--dtype", "invalid choice"]),
    ("unknown-flag", ["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ("num-inits-zero", ["--num-inits", 0], ["num_inits", "at least 1"]),
    ("max-iter-negative", ["--max-iter", -1], ["max_iter", "at least 1"]),
    ("tol-negative", ["--tol", -1], ["--tol must be a finite number >= 0, got -1.0"]),
    ("tol-NaN", ["--tol", "nan"], ["--tol must be a finite number >= 0, got nan"]),
    ("svi-num-steps-zero", ["--method", "svi", "--num-steps", 0], ["num_steps must be at least 1"]),
    ("svi-lr-negative", ["--method", "svi", "--lr", -1], ["--lr must be a finite number > 0"]),
    ("svi-lr-zero", ["--method", "svi", "--lr", 0], ["--lr must be a finite number > 0"]),
    ("svi-lr-NaN", ["--method", "svi", "--lr", "nan"], ["--lr must be a finite number > 0, got nan"]),
    ("mcmc-num-samples-zero", ["--method", "mcmc", "--num-samples", 0], ["num_samples"]),
    ("mcmc-warmup-negative", ["--method", "mcmc", "--num-samples", 2, "--warmup", -1], ["warmup_steps >= 0"]),
    ("mcmc-num-chains-zero", ["--method", "mcmc", "--num-samples", 2, "--num-chains", 0], ["num_chains"]),
    ("mcmc-tree-depth-zero", ["--method", "mcmc", "--max-tree-depth", 0], ["--max-tree-depth must be at least 1"]),
    ("mcmc-target-accept-1.5", ["--method", "mcmc", "--target-accept", 1.5], ["--target-accept must be in (0, 1)"]),
    ("mcmc-target-accept-0", ["--method", "mcmc", "--target-accept", 0], ["--target-accept must be in (0, 1)"]),
    # models
    ("model-unknown-name", ["--model", "nosuch"], ["unknown model 'nosuch'", "baseline"]),
    ("model-missing-file", ["--model", "/nonexistent/variant.py"], ["/nonexistent/variant.py", "does not exist"]),
    ("model-detector-not-fittable-here", ["--model", "detector"], ["'detector'", "metagen-ppl metacognition"]),
    ("model-projective-not-fittable-here", ["--model", "projective"], ["'projective'", "metagen-ppl evaluate"]),
    ("categories-with-baseline", ["--categories", "mstep"], ["'baseline' has no per-object category sites"]),
]


@pytest.mark.parametrize("extra, needles", [c[1:] for c in FIT_ARG_CASES], ids=[c[0] for c in FIT_ARG_CASES])
def test_fit_rejects_bad_arguments(tmp_path, capsys, extra, needles):
    path = write(tmp_path, "data.json", GOOD)
    code, _, err = run(capsys, "fit", "--data", path, *FIT_FAST, *extra)
    assert_one_line_error(code, err, *needles)


BAD_MODEL_FILES = [
    ("syntax-error", "def model(data, num_objects:\n    pass\n", ["variant.py", "failed to import", "SyntaxError"]),
    ("raises-on-import", "raise RuntimeError('boom')\n", ["variant.py", "failed to import", "RuntimeError: boom"]),
    ("no-model-function", "x = 1\n", ["'variant'", "defines no function `model"]),
    ("model-not-callable", "model = 3\n", ["defines no function `model"]),
]


@pytest.mark.parametrize("source, needles", [c[1:] for c in BAD_MODEL_FILES], ids=[c[0] for c in BAD_MODEL_FILES])
@pytest.mark.parametrize("command", ["fit", "simulate"])
def test_bad_model_file(tmp_path, capsys, command, source, needles):
    model = write(tmp_path, "variant.py", source)
    args = (["--data", write(tmp_path, "data.json", GOOD)] if command == "fit"
            else ["-K", 1, "-N", 5, "--out", tmp_path / "out.json"])
    code, _, err = run(capsys, command, "--model", model, *args)
    assert_one_line_error(code, err, *needles)


def test_model_file_that_is_not_python(tmp_path, capsys):
    model = write(tmp_path, "variant.txt", "def model(data, num_objects): pass\n")
    code, _, err = run(capsys, "fit", "--model", model, "--data", write(tmp_path, "d.json", GOOD))
    assert_one_line_error(code, err, "variant.txt", "not a Python file")


PATH_CASES = [
    ("data-missing", lambda t: ["--data", t / "missing.json"], ["missing.json", "does not exist"]),
    ("data-is-directory", lambda t: ["--data", t], ["is a directory"]),
    ("out-under-regular-file", lambda t: ["--data", t / "data.json", "--out", t / "data.json" / "sub" / "fit.json"],
     ["data.json/sub", "a file is in the way"]),
    ("out-is-directory", lambda t: ["--data", t / "data.json", "--out", t], ["is a directory", "file name"]),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_fit_bad_paths(tmp_path, capsys, argv, needles):
    write(tmp_path, "data.json", GOOD)
    code, _, err = run(capsys, "fit", *FIT_FAST, *argv(tmp_path))
    assert_one_line_error(code, err, *needles)


# --------------------------------------------------------------------------- fit --model categorical
CATEGORICAL_CASES = [
    ("no-categories-field", GOOD, [], ["data.json", "needs \"categories\""]),
    ("category-negative", with_(GOOD_CAT, categories=[0, 0, 1, 1, 2, -2]), [], ["data.json", "category 5 is -2"]),
    ("category-float", with_(GOOD_CAT, categories=[0, 0, 1, 1, 2, 2.5]), [], ["data.json", "category 5", "2.5"]),
    ("category-name", with_(GOOD_CAT, categories=[0, 0, 1, 1, 2, "tv"]), [], ["data.json", "category 5", "'tv'"]),
    ("category-out-of-range", GOOD_CAT, ["-O", "num_categories=2"], ["data.json", "data['o'][4] = 2", "0..1"]),
    ("num_categories-zero-option", GOOD_CAT, ["-O", "num_categories=0"], ["--option num_categories=0", ">= 1"]),
    ("num_categories-negative-option", GOOD_CAT, ["-O", "num_categories=-3"], ["num_categories=-3", ">= 1"]),
    ("num_categories-negative-in-file", with_(GOOD_CAT, num_categories=-1), [],
     ["data.json", "'num_categories' must be an integer >= 1"]),
    ("num_categories-string-in-file", with_(GOOD_CAT, num_categories="x"), [],
     ["data.json", "'num_categories' must be an integer >= 1, got 'x'"]),
    ("num_objects-zero-in-file", with_(GOOD_CAT, num_objects=0), [], ["data.json", "'num_objects'", ">= 1"]),
    ("NaN-observation", '{"observations": [[0, 0, NaN], [1, 1, 1]], "categories": [0, 1], "num_objects": 1}', [],
     ["data.json", "row 0 contains nan"]),
    ("ragged-observations", with_(GOOD_CAT, observations=POINTS[:5] + [[6, 6]]), [],
     ["data.json", "row 5 has 2 coordinates"]),
    ("zero-observations", {"observations": [], "categories": [], "num_objects": 1}, [], ["data.json", "empty list"]),
    ("confusion-rows-not-summing", GOOD_CAT, ["-O", "confusion=[[0.5,0.6,0],[0,1,0],[0,0,1]]"],
     ["confusion matrix must sum to 1", "row 0"]),
    ("confusion-too-small", GOOD_CAT, ["-O", "confusion=[[1]]"], ["out of range", "C = 1"]),
    ("category_prior-negative", GOOD_CAT, ["-O", "category_prior=[2,-1,0]"], ["category_prior", "non-negative"]),
    ("confusion_concentration-below-1", GOOD_CAT, ["-O", "confusion_concentration=0.5"],
     ["confusion_concentration must be >= 1"]),
    ("negative-scale", GOOD_CAT, ["-O", "scale=-1"], ["--option scale=-1", "> 0"]),
    ("num-category-samples-zero", GOOD_CAT, ["--categories", "sample", "--num-category-samples", 0],
     ["num_category_samples must be at least 1"]),
    ("multi-scene-file", json.dumps(scenes()), ["-K", 1], ["data.json", "needs \"observations\""]),
]


@pytest.mark.parametrize("content, extra, needles", [c[1:] for c in CATEGORICAL_CASES],
                         ids=[c[0] for c in CATEGORICAL_CASES])
def test_fit_categorical_rejects(tmp_path, capsys, content, extra, needles):
    path = write(tmp_path, "data.json", content)
    code, _, err = run(capsys, "fit", "--model", "categorical", "--data", path, *FIT_FAST, *extra)
    assert_one_line_error(code, err, *needles)


# fit --model detector works only with its structure given (-O cats=...); then its options are checked.
DETECTOR_OPTION_CASES = [
    ("rates-negative", ["-O", "rates=[-1,1,1,1,1]"], ["--option rates=[-1.0, 1.0, 1.0, 1.0, 1.0]", "> 0"]),
    ("hallucination-NaN", ["-O", "hallucination=[NaN,1,1,1,1]"], ["--option hallucination=[nan", "finite"]),
    ("rates-wrong-length", ["-O", "rates=[1,1]"], ["rates must hold 5 values", "(2,)"]),
    ("rates-not-numbers", ["-O", 'rates=["a"]'], ["--option rates", "list of numbers"]),
    ("scale-negative", ["-O", "scale=-0.5"], ["--option scale=-0.5", "> 0"]),
    ("count_prior_p-above-1", ["-O", "count_prior_p=1.5"], ["count_prior_p=1.5", "(0, 1)"]),
    ("rate_prior_rate-zero", ["-O", "rate_prior_rate=0"], ["rate_prior_rate=0", "> 0"]),
    ("cats-wrong-shape", [], ["cats and active must have shape (S, K) = (2, 1)"]),
]


@pytest.mark.parametrize("extra, needles", [c[1:] for c in DETECTOR_OPTION_CASES],
                         ids=[c[0] for c in DETECTOR_OPTION_CASES])
def test_fit_detector_rejects_bad_options(tmp_path, capsys, extra, needles):
    path = write(tmp_path, "scenes.json", scenes())
    cats = "cats=[[0]]" if not extra else "cats=[[0],[1]]"
    code, _, err = run(capsys, "fit", "--model", "detector", "--data", path, "-K", 1, "-O", cats, *FIT_FAST, *extra)
    assert_one_line_error(code, err, *needles)


def test_fit_detector_with_given_structure_runs(tmp_path, capsys):
    """The multi-scene list reaches the detector's own loader (not the single-scene check)."""
    path = write(tmp_path, "scenes.json", mutated(scenes, _no_detections(1)))
    code, out, err = run(capsys, "fit", "--model", "detector", "--data", path, "-K", 1, "-O", "cats=[[0],[1]]",
                         *FIT_FAST)
    assert code == 0, err
    assert "em detector K=1" in out


# --------------------------------------------------------------------------- simulate
SIMULATE_CASES = [
    ("K-zero", ["-K", 0, "-N", 10], ["--num-objects must be at least 1"]),
    ("N-zero", ["-K", 1, "-N", 0], ["--num-obs must be at least 1"]),
    ("K-larger-than-N", ["-K", 3, "-N", 2], ["--num-objects 3 exceeds --num-obs 2"]),
    ("K-missing", ["-N", 5], ["required", "--num-objects"]),
    ("scale-negative", ["-K", 2, "-N", 10, "-O", "scale=-1"], ["--option scale=-1", "> 0"]),
    ("scale-NaN", ["-K", 2, "-N", 10, "-O", "scale=NaN"], ["--option scale=nan", "finite"]),
    ("weights-not-summing", ["-K", 2, "-N", 10, "-O", "weights=[1,2]"], ["weights", "sum to 1"]),
    ("weights-wrong-length", ["-K", 2, "-N", 10, "-O", "weights=[0.5]"], ["weights has 1 entries", "2 objects"]),
    ("option-unknown", ["-K", 2, "-N", 10, "-O", "bogus=1"], ["no option 'bogus'"]),
    ("model-unknown", ["-K", 2, "-N", 10, "--model", "nosuch"], ["unknown model 'nosuch'"]),
    ("categorical-num_categories-negative", ["-K", 2, "-N", 10, "--model", "categorical", "-O", "num_categories=-1"],
     ["num_categories=-1", ">= 1"]),
    ("categorical-confusion_diag-2", ["-K", 2, "-N", 10, "--model", "categorical", "-O", "confusion_diag=2"],
     ["confusion diagonal must be in (0, 1], got 2"]),
    ("categorical-cats-out-of-range", ["-K", 2, "-N", 10, "--model", "categorical", "-O", "cats=[0,9]"],
     ["cats must be 2 ints in 0..4"]),
    ("detector-is-multi-scene", ["-K", 1, "-N", 2, "--model", "detector"], ["'detector'", "metacognition"]),
    ("projective-is-multi-scene", ["-K", 1, "-N", 2, "--model", "projective"], ["'projective'", "evaluate"]),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in SIMULATE_CASES], ids=[c[0] for c in SIMULATE_CASES])
def test_simulate_rejects(tmp_path, capsys, argv, needles):
    code, _, err = run(capsys, "simulate", *argv, "--out", tmp_path / "sim.json")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "sim.json").exists()


@pytest.mark.parametrize("out, needles", [
    (lambda t: t / "file.json" / "sim.json", ["file.json", "a file is in the way"]),
    (lambda t: t, ["is a directory"]),
], ids=["out-under-regular-file", "out-is-directory"])
def test_simulate_bad_output_path(tmp_path, capsys, out, needles):
    write(tmp_path, "file.json", GOOD)
    code, _, err = run(capsys, "simulate", "-K", 1, "-N", 5, "--out", out(tmp_path))
    assert_one_line_error(code, err, *needles)


# --------------------------------------------------------------------------- metacognition (multi-scene 3D)
def _set(path, value):
    """A mutation ``obj[path...] = value`` (``None`` value with ``pop=True`` semantics via ``_pop``)."""
    def fn(obj):
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return fn


def _pop(path):
    def fn(obj):
        target = obj
        for key in path[:-1]:
            target = target[key]
        target.pop(path[-1])
    return fn


DET = ("views", 0, "detections")
META_FILE_CASES = [
    ("empty-file", "", ["scenes.json", "is empty"]),
    ("whitespace-only", "   \n", ["scenes.json", "is empty"]),
    ("not-json", "{scenes}", ["scenes.json", "not valid JSON"]),
    ("single-scene-file", json.dumps(GOOD), ["scenes.json", "JSON list of scenes", "metagen-ppl fit"]),
    ("no-scenes", "[]", ["scenes.json", "no scenes"]),
    ("scene-not-object", ["abc"], ["scenes.json", "scene 0: expected a JSON object"]),
    ("path-not-string", mutated(scenes, _set([0, "path"], [1])), ["scene 0", "'path' must be a string"]),
    ("missing-views", mutated(scenes, _pop([1, "views"])), ["scenes.json", "scene 1 (path '001')", "'views'"]),
    ("zero-frames", mutated(scenes, _set([1, "views"], [])), ["scene 1 (path '001')", "non-empty list of frames"]),
    ("detections-not-object", mutated(scenes, _set([0, "views", 1, "detections"], [])),
     ["scene 0 (path '000'), frame 1", "'detections' must be a JSON object"]),
    ("missing-position", mutated(scenes, _pop([0, *DET, "position"])),
     ["scene 0 (path '000'), frame 0", "lack field 'position'"]),
    ("2d-centers-instead-of-position",
     mutated(scenes, lambda o: o[0]["views"][0]["detections"].__setitem__(
         "center", o[0]["views"][0]["detections"].pop("position"))),
     ["frame 0", "2D detections", "projective"]),
    ("position-2-numbers", mutated(scenes, _set([0, *DET, "position", 1], [1.0, 2.0])),
     ["scene 0 (path '000'), frame 0", "position[1] must be a list of 3 numbers"]),
    ("position-NaN", mutated(scenes, _set([1, "views", 1, "detections", "position", 0], [0, float("nan"), 0])),
     ["scene 1 (path '001'), frame 1", "position[0][1] is not finite (nan)"]),
    ("position-Infinity", mutated(scenes, _set([1, *DET, "position", 1], [float("inf"), 0, 0])),
     ["scene 1 (path '001'), frame 0", "not finite (inf)"]),
    ("position-minus-Infinity", mutated(scenes, _set([0, *DET, "position", 2], [0, 0, float("-inf")])),
     ["scene 0 (path '000'), frame 0", "position[2][2] is not finite (-inf)"]),
    ("position-string", mutated(scenes, _set([0, *DET, "position", 0], [0, "a", 0])),
     ["frame 0", "position[0][1] must be a number"]),
    ("labels-positions-lengths-differ", mutated(scenes, lambda o: o[0]["views"][0]["detections"]["labels"].pop()),
     ["scene 0 (path '000'), frame 0", "3 entries", "has 2"]),
    ("label-unknown-name", mutated(scenes, _set([0, "views", 1, "detections", "labels", 0], "sofa")),
     ["scene 0 (path '000'), frame 1", "unknown category 'sofa'"]),
    ("label-float", mutated(scenes, _set([0, *DET, "labels", 1], 62.5)), ["frame 0", "COCO id", "62.5"]),
    ("label-bool", mutated(scenes, _set([0, *DET, "labels", 1], True)), ["frame 0", "COCO id", "True"]),
    ("score-outside-0-1", mutated(scenes, _set([0, *DET, "scores", 0], 1.5)),
     ["scene 0 (path '000'), frame 0", "scores[0] = 1.5 is outside [0, 1]"]),
    ("box-empty", mutated(scenes, _set([0, "box"], [[0, 0, 0], [0, 0, 0]])), ["scene 0", "'box' upper corner"]),
    ("ground-truth-unknown-category",
     mutated(scenes, lambda o: o[1]["labels"].append({"category_name": "sofa", "position": [0, 0, 0]})),
     ["scene 1 (path '001')", "unknown category 'sofa'", "labels[1]"]),
    ("ground-truth-missing-position", mutated(scenes, lambda o: o[0]["labels"].append({"category_name": "tv"})),
     ["scene 0 (path '000')", "labels[1]", "'position'"]),
    ("ground-truth-missing-in-one-scene", mutated(scenes, _pop([1, "labels"])),
     ["scene 1 (path '001')", "missing field 'labels'"]),
    ("detector-truth-negative-rate",
     mutated(scenes, _set([0, "detector_truth"], {"detection_rate": dict.fromkeys(CATS, -1.0),
                                                  "hallucination_rate": dict.fromkeys(CATS, 0.5)})),
     ["scene 0 (path '000')", "detection_rate of category 'chair' is -1.0"]),
]


@pytest.mark.parametrize("content, needles", [c[1:] for c in META_FILE_CASES], ids=[c[0] for c in META_FILE_CASES])
def test_metacognition_fit_rejects_bad_scene_file(tmp_path, capsys, content, needles):
    path = write(tmp_path, "scenes.json", content)
    code, _, err = run(capsys, "metacognition", "fit", "--data", path, *META_FAST)
    assert_one_line_error(code, err, *needles)
    assert "scenes.json" in err


def _V(**over):
    v = {"detection_rate": dict.fromkeys(CATS, 1.0), "hallucination_rate": dict.fromkeys(CATS, 0.2)}
    for key, val in over.items():
        v[key] = val
    return v


META_ARG_CASES = [
    ("data-missing", lambda t: ["--data", t / "missing.json"], ["missing.json", "does not exist"]),
    ("data-option-absent", lambda t: [], ["required", "--data"]),
    ("mode-unknown", lambda t: ["--mode", "psychic"], ["--mode", "invalid choice: 'psychic'"]),
    ("inner-unknown", lambda t: ["--inner", "mcmc"], ["--inner", "invalid choice"]),
    ("max-rounds-zero", lambda t: ["--max-rounds", 0], ["max_rounds must be an integer >= 1"]),
    ("max-objects-zero", lambda t: ["--max-objects", 0], ["max_objects must be an integer >= 1"]),
    ("max-iter-negative", lambda t: ["--max-iter", -1], ["max_iter must be an integer >= 1"]),
    ("tol-negative", lambda t: ["--tol", -1], ["tol must be a finite number >= 0"]),
    ("tol-NaN", lambda t: ["--tol", "nan"], ["tol must be a finite number >= 0"]),
    ("unknown-flag", lambda t: ["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ("fixed-without-V", lambda t: ["--mode", "fixed"], ["mode='fixed' needs V"]),
    ("V-with-learn", lambda t: ["--V", write(t, "V.json", _V())], ["V is only used with mode='fixed'"]),
    ("V-missing-file", lambda t: ["--mode", "fixed", "--V", t / "noV.json"], ["noV.json", "does not exist"]),
    ("V-empty-file", lambda t: ["--mode", "fixed", "--V", write(t, "V.json", "")], ["V.json", "is empty"]),
    ("V-list", lambda t: ["--mode", "fixed", "--V", write(t, "V.json", [1, 2])], ["V.json", "JSON object"]),
    ("V-negative-rate", lambda t: ["--mode", "fixed", "--V", write(t, "V.json", _V(
        detection_rate=dict(dict.fromkeys(CATS, 1.0), tv=-1.0)))], ["V.json", "detection_rate", "'tv' is -1.0"]),
    ("V-NaN-rate", lambda t: ["--mode", "fixed", "--V", write(t, "V.json", _V(
        hallucination_rate=dict(dict.fromkeys(CATS, 0.2), bowl=float("nan"))))], ["V.json", "'bowl'", "not finite"]),
    ("V-unknown-category", lambda t: ["--mode", "fixed", "--V", write(t, "V.json", _V(
        detection_rate=dict(dict.fromkeys(CATS, 1.0), sofa=1.0)))], ["V.json", "unknown category 'sofa'"]),
    ("V-missing-category", lambda t: ["--mode", "fixed", "--V", write(t, "V.json", _V(
        detection_rate={"chair": 1.0}))], ["V.json", "lacks categories plant, tv, umbrella, bowl"]),
    ("V-negative-scale", lambda t: ["--mode", "fixed", "--V", write(t, "V.json", _V(scale=-1))],
     ["V.json", "scale is -1.0"]),
    ("out-under-regular-file", lambda t: ["--out", t / "scenes.json" / "fit.json"],
     ["scenes.json", "a file is in the way"]),
    ("out-is-directory", lambda t: ["--out", _mkdir(t / "outdir")], ["outdir", "is a directory"]),
]


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("argv, needles", [c[1:] for c in META_ARG_CASES], ids=[c[0] for c in META_ARG_CASES])
def test_metacognition_fit_rejects_bad_arguments(tmp_path, capsys, argv, needles):
    data = ["--data", write(tmp_path, "scenes.json", scenes())]
    extra = argv(tmp_path)
    if "--data" in extra or not extra and "--data" in needles:
        data = []
    code, _, err = run(capsys, "metacognition", "fit", *data, *META_FAST, *extra)
    assert_one_line_error(code, err, *needles)


META_SIM_CASES = [
    ("num-scenes-zero", ["--num-scenes", 0], ["num_scenes and num_frames must be at least 1"]),
    ("num-scenes-negative", ["--num-scenes", -1], ["num_scenes and num_frames must be at least 1"]),
    ("zero-frames", ["--num-frames", 0], ["num_scenes and num_frames must be at least 1"]),
    ("scale-negative", ["--scale", -1], ["scale", "must be a finite number > 0, got -1.0"]),
    ("scale-NaN", ["--scale", "nan"], ["scale", "must be a finite number > 0, got nan"]),
    ("emission-unknown", ["--emission", "gauss"], ["--emission", "invalid choice"]),
    ("V-list", ["--V", "LIST"], ["V.json", "JSON object"]),
    ("V-negative", ["--V", "NEG"], ["V.json", "'chair' is -1.0"]),
    ("V-missing-file", ["--V", "/nonexistent/V.json"], ["/nonexistent/V.json", "does not exist"]),
    ("subcommand-unknown", None, ["invalid choice: 'sing'"]),
    ("subcommand-missing", [], ["required", "COMMAND"]),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in META_SIM_CASES], ids=[c[0] for c in META_SIM_CASES])
def test_metacognition_simulate_rejects(tmp_path, capsys, argv, needles):
    if argv is None:
        full = ["metacognition", "sing"]
    elif argv == []:
        full = ["metacognition"]
    else:
        argv = [write(tmp_path, "V.json", [1, 2]) if a == "LIST" else
                write(tmp_path, "V.json", _V(detection_rate=dict.fromkeys(CATS, -1.0))) if a == "NEG" else a
                for a in argv]
        full = ["metacognition", "simulate", "--num-scenes", 1, "--num-frames", 1, *argv,
                "--out", tmp_path / "sim.json"]
    code, _, err = run(capsys, *full)
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("out, needles", [
    (lambda t: t / "file.json" / "sim.json", ["file.json", "a file is in the way"]),
    (lambda t: t, ["is a directory"]),
], ids=["out-under-regular-file", "out-is-directory"])
def test_metacognition_simulate_bad_output_path(tmp_path, capsys, out, needles):
    write(tmp_path, "file.json", GOOD)
    code, _, err = run(capsys, "metacognition", "simulate", "--num-scenes", 1, "--num-frames", 1,
                       "--out", out(tmp_path))
    assert_one_line_error(code, err, *needles)


def _no_detections(scene_index):
    def fn(obj):
        for s, sc in enumerate(obj):
            if scene_index is None or s == scene_index:
                for v in sc["views"]:
                    v["detections"] = {"labels": [], "position": [], "scores": []}
    return fn


@pytest.mark.parametrize("content", [
    mutated(scenes, _no_detections(1)),
    mutated(scenes, _no_detections(None)),
    mutated(scenes, lambda o: o[0]["views"][1]["detections"].update(labels=[], position=[], scores=[])),
    mutated(scenes, _set([0, *DET, "labels", 0], 999)),  # a COCO id outside the five: dropped and counted
], ids=["scene-without-detections", "no-detections-anywhere", "frame-without-detections", "other-COCO-id"])
def test_metacognition_accepts_scenes_without_detections(tmp_path, capsys, content):
    path = write(tmp_path, "scenes.json", content)
    code, out, err = run(capsys, "metacognition", "fit", "--data", path, *META_FAST)
    assert code == 0, err
    assert "error" not in err and "learn (em)" in out


# --------------------------------------------------------------------------- evaluate (MetaGen video files)
CAM = ("views", 1, "camera")
EVAL_FILE_CASES = [
    ("empty-file", "", ["videos.json", "is empty"]),
    ("not-json", "[{", ["videos.json", "not valid JSON"]),
    ("single-scene-file", json.dumps(GOOD), ["videos.json", "JSON list of videos", "metagen-ppl fit"]),
    ("no-videos", "[]", ["videos.json", "no videos"]),
    ("video-not-object", [[1]], ["videos.json", "video 0: expected a JSON object"]),
    ("missing-path", mutated(videos, _pop([0, "path"])), ["videos.json", "video 0: missing field 'path'"]),
    ("missing-views", mutated(videos, _pop([1, "views"])), ["video 1 (path '001')", "missing field 'views'"]),
    ("views-not-list", mutated(videos, _set([0, "views"], {})), ["video 0 (path '000')", "'views' must be a list"]),
    ("zero-frames", mutated(videos, _set([1, "views"], [])), ["video 1 (path '001')", "'views' is empty"]),
    ("missing-camera", mutated(videos, _pop([0, *CAM])), ["video 0 (path '000'), frame 1", "missing field 'camera'"]),
    ("missing-lookat", mutated(videos, _pop([1, "views", 2, "lookat"])),
     ["video 1 (path '001'), frame 2", "missing field 'lookat'"]),
    ("camera-missing-y", mutated(videos, _pop([0, *CAM, "y"])), ["video 0 (path '000'), frame 1", "lacks field(s) y"]),
    ("camera-NaN", mutated(videos, _set([0, *CAM, "z"], float("nan"))), ["frame 1", "camera.z is not finite (nan)"]),
    ("camera-Infinity", mutated(videos, _set([0, *CAM, "x"], float("inf"))), ["frame 1", "camera.x is not finite"]),
    ("camera-string", mutated(videos, _set([0, *CAM], "here")), ["frame 1", "camera must be a list of 3 numbers"]),
    ("camera-2-numbers", mutated(videos, _set([0, *CAM], [1.0, 2.0])), ["frame 1", "list of 3 numbers"]),
    ("camera-at-lookat", mutated(videos, _set([0, *CAM], {"x": 0.0, "y": 0.5, "z": 0.0})),
     ["video 0 (path '000'), frame 1", "at its own look-at point"]),
    ("camera-looks-straight-down", mutated(videos, _set([0, "views", 1, "lookat"], {"x": 4.0, "y": 0.0, "z": 0.0})),
     ["video 0 (path '000'), frame 1", "straight up or down"]),
    ("detections-missing-in-one-frame", mutated(videos, _pop([1, "views", 0, "detections"])),
     ["video 1 (path '001'), frame 0", "missing field 'detections'"]),
    ("no-detections-anywhere",
     mutated(videos, lambda o: [v.pop("detections") for vid in o for v in vid["views"]]),
     ["videos.json", "no 'detections'"]),
    ("detections-not-object", mutated(videos, _set([0, *DET], [])), ["frame 0", "detections must be a JSON object"]),
    ("detections-missing-scores", mutated(videos, _pop([0, *DET, "scores"])),
     ["video 0 (path '000'), frame 0", "missing field 'scores'"]),
    ("detection-lists-ragged", mutated(videos, lambda o: o[0]["views"][0]["detections"]["scores"].append(0.5)),
     ["video 0 (path '000'), frame 0", "has 1 entries", "has 2"]),
    ("label-name-not-COCO-id", mutated(videos, _set([0, *DET, "labels", 0], "chair")),
     ["frame 0", "integer COCO id", "'chair'"]),
    ("label-float", mutated(videos, _set([0, *DET, "labels", 0], 62.5)), ["frame 0", "integer COCO id", "62.5"]),
    ("center-NaN", mutated(videos, _set([1, *DET, "center", 0], [float("nan"), 3.0])),
     ["video 1 (path '001'), frame 0", "center[0][0] is not finite (nan)"]),
    ("center-1e400", '[{"path": "a", "views": [{"camera": [4, 2, 0], "lookat": [0, 0.5, 0], "detections": '
                     '{"scores": [0.5], "labels": [62], "center": [[1e400, 3]], "top_left": [[0, 0]], '
                     '"bottom_right": [[5, 5]]}}]}]', ["video 0 (path 'a'), frame 0", "not finite (inf)"]),
    ("center-3-numbers", mutated(videos, _set([0, *DET, "center", 0], [1, 2, 3])),
     ["frame 0", "center[0] must be a list of 2 numbers"]),
    ("score-above-1", mutated(videos, _set([0, *DET, "scores", 0], 2)), ["frame 0", "scores[0] = 2.0 is outside"]),
    ("box-inverted", mutated(videos, _set([0, *DET, "bottom_right", 0], [0, 0])), ["frame 0", "bottom_right"]),
    ("ground-truth-unknown-category", mutated(videos, _set([1, "labels", 0, "category_name"], "sofa")),
     ["video 1 (path '001')", "unknown category 'sofa'"]),
    ("ground-truth-COCO-id-as-name", mutated(videos, _set([0, "labels", 0, "category_name"], 62)),
     ["video 0 (path '000')", "unknown category 62"]),
    ("ground-truth-NaN-position", mutated(videos, _set([0, "labels", 0, "position"], [0, float("nan"), 0])),
     ["video 0 (path '000')", "labels[0].position[1] is not finite"]),
    ("ground-truth-missing-in-one-video", mutated(videos, _pop([0, "labels"])),
     ["video 0 (path '000')", "missing field 'labels'"]),
    ("labels2D-unknown-category",
     mutated(videos, lambda o: [v.__setitem__("labels2D", [{"category_name": "sofa", "top_left": [0, 0],
                                                           "bottom_right": [1, 1]}])
                                for vid in o for v in vid["views"]]),
     ["video 0 (path '000'), frame 0", "unknown category 'sofa' in labels2D[0]"]),
]


@pytest.mark.parametrize("content, needles", [c[1:] for c in EVAL_FILE_CASES], ids=[c[0] for c in EVAL_FILE_CASES])
def test_evaluate_rejects_bad_video_file(tmp_path, capsys, content, needles):
    path = write(tmp_path, "videos.json", content)
    code, _, err = run(capsys, "evaluate", "--data", path, "--out", tmp_path / "out", *EVAL_FAST)
    assert_one_line_error(code, err, *needles)
    assert "videos.json" in err
    assert not (tmp_path / "out").exists()  # nothing written for a bad file


EVAL_ARG_CASES = [
    ("data-missing", lambda t: ["--data", t / "missing.json", "--out", t / "o"], ["missing.json", "does not exist"]),
    ("data-absent", lambda t: ["--out", t / "o"], ["required", "--data"]),
    ("out-is-regular-file", lambda t: ["--out", t / "videos.json"], ["videos.json", "exists and is not a directory"]),
    ("out-under-regular-file", lambda t: ["--out", t / "videos.json" / "sub"],
     ["cannot create output directory", "videos.json/sub"]),
    ("max-objects-zero", lambda t: ["--max-objects", 0], ["max_objects must be a positive integer"]),
    ("plots-negative", lambda t: ["--plots", -1], ["plots must be a non-negative integer"]),
    ("threads-negative", lambda t: ["--threads", -1], ["--threads must be 'auto', 0", "got '-1'"]),
    ("svi-steps-zero", lambda t: ["--method", "svi", "--svi-steps", 0], ["svi_steps must be a positive integer"]),
    ("svi-lr-negative", lambda t: ["--method", "svi", "--svi-lr", -1], ["svi_lr must be a finite number > 0"]),
    ("svi-lr-NaN", lambda t: ["--method", "svi", "--svi-lr", "nan"], ["svi_lr must be a finite number > 0"]),
    ("mcmc-samples-zero", lambda t: ["--method", "mcmc", "--mcmc-samples", 0], ["mcmc_samples must be a positive"]),
    ("mcmc-warmup-negative", lambda t: ["--method", "mcmc", "--mcmc-warmup", -1], ["mcmc_warmup must be a non-neg"]),
    ("method-unknown", lambda t: ["--method", "bogus"], ["--method", "invalid choice: 'bogus'"]),
    ("learn-on-unknown", lambda t: ["--learn-on", "test"], ["--learn-on", "invalid choice"]),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in EVAL_ARG_CASES], ids=[c[0] for c in EVAL_ARG_CASES])
def test_evaluate_rejects_bad_arguments(tmp_path, capsys, argv, needles):
    data = write(tmp_path, "videos.json", videos())
    extra = [str(a) for a in argv(tmp_path)]
    base = [] if "--data" in extra or "--data" in needles else ["--data", data]
    if "--out" not in extra:
        base += ["--out", tmp_path / "o"]
    code, _, err = run(capsys, "evaluate", *base, *EVAL_FAST, *extra)
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("content", [
    mutated(videos, lambda o: [v["detections"].update(scores=[], labels=[], center=[], top_left=[], bottom_right=[])
                               for v in o[1]["views"]]),
    mutated(videos, _set([0, *DET, "labels", 0], 999)),  # a COCO id outside the five: dropped and counted
    mutated(videos, lambda o: [vid.pop("labels") for vid in o]),  # no ground truth: world states, no scores
], ids=["video-without-detections", "other-COCO-id", "no-ground-truth"])
def test_evaluate_accepts_videos_without_detections(tmp_path, capsys, content):
    path = write(tmp_path, "videos.json", content)
    code, out, err = run(capsys, "evaluate", "--data", path, "--out", tmp_path / "out", *EVAL_FAST)
    assert code == 0, err
    assert (tmp_path / "out" / "world_states.json").exists()


@pytest.mark.skipif(not os.path.exists(SHARED), reason="shared MetaGen data (../shared/data/metagen2021) not present")
def test_evaluate_names_file_video_and_frame_in_real_data(tmp_path, capsys):
    """Two real videos with one frame's camera broken: the error names file, video and frame."""
    with open(SHARED) as fh:
        real = json.load(fh)[:2]
    real[1]["views"][7]["camera"].pop("z")
    path = write(tmp_path, "two_videos.json", real)
    code, _, err = run(capsys, "evaluate", "--data", path, "--out", tmp_path / "out", *EVAL_FAST)
    assert_one_line_error(code, err, "two_videos.json", f"video 1 (path {real[1]['path']!r}), frame 7",
                          "camera lacks field(s) z")


# --------------------------------------------------------------------------- other commands
@pytest.mark.parametrize("argv, needles", [
    ([], ["required", "COMMAND"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["--frobnicate"], ["required", "COMMAND"]),
    (["compare-categories", "--bogus"], ["unrecognized arguments: --bogus", "compare-categories"]),
    (["compare-categories", "--seeds", "x"], ["--seeds", "invalid int value: 'x'"]),
    (["compare-categories", "--methods", "nope"], ["unknown methods ['nope']"]),
    (["compare-categories", "--settings", "2,x"], ["compare-categories", "not enough values"]),
], ids=["no-command", "unknown-command", "unknown-flag", "compare-categories-unknown-flag",
        "compare-categories-bad-int", "compare-categories-unknown-method", "compare-categories-bad-settings"])
def test_command_line_syntax_errors(capsys, argv, needles):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *needles)


def test_compare_categories_output_under_regular_file(tmp_path, capsys):
    blocker = write(tmp_path, "file.json", GOOD)
    code, _, err = run(capsys, "compare-categories", "--quick", "--out", os.path.join(blocker, "sub"))
    assert_one_line_error(code, err, "output directory", "file.json/sub", "a file is in the way", "is not a directory")


# --------------------------------------------------------------------------- --debug prints the traceback
DEBUG_CASES = [
    ("fit-NaN", lambda t: ["fit", "--data", write(t, "d.json", '{"observations": [[NaN, 0, 0]]}'), "-K", 1]),
    ("fit-missing-file", lambda t: ["fit", "--debug", "--data", t / "missing.json"]),
    ("fit-model-syntax-error", lambda t: ["fit", "--model", write(t, "m.py", "def model(:\n"),
                                          "--data", write(t, "d.json", GOOD)]),
    ("simulate-out-under-file", lambda t: ["simulate", "-K", 1, "-N", 3, "--out", t / "d.json" / "x.json"]),
    ("metacognition-empty-file", lambda t: ["metacognition", "fit", "--data", write(t, "s.json", "")]),
    ("evaluate-missing-camera", lambda t: ["evaluate", "--data", write(t, "v.json", mutated(
        videos, _pop([0, *CAM]))), "--out", t / "o"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in DEBUG_CASES], ids=[c[0] for c in DEBUG_CASES])
def test_debug_prints_traceback(tmp_path, capsys, argv):
    write(tmp_path, "d.json", GOOD)
    args = [str(a) for a in argv(tmp_path)]
    if "--debug" not in args:
        args.append("--debug")
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("metagen-ppl: error: ")


# --------------------------------------------------------------------------- end to end (subprocess)
def _launchers():
    out = [pytest.param([sys.executable, "-m", "metagen_ppl.apps.cli"], id="python-m")]
    exe = shutil.which("metagen-ppl")
    ok = False
    if exe:
        try:
            ok = subprocess.run([exe, "--version"], capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    out.append(pytest.param([exe or "metagen-ppl"], id="entry-point",
                            marks=pytest.mark.skipif(not ok, reason="the metagen-ppl entry point is not "
                                                                    "installed for this tree")))
    return out


@pytest.mark.parametrize("launcher", _launchers())
def test_end_to_end_bad_input_exit_code_and_one_line(tmp_path, launcher):
    bad = write(tmp_path, "data.json", '{"observations": [[0, 0, 0], [1, Infinity, 1]], "num_objects": 1}')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([*launcher, "fit", "--data", bad], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metagen-ppl: error: "), proc.stderr
    assert "data.json" in lines[0] and "row 1 contains inf" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# =========================================================================== public functions
def _fit(method, data, k, **kw):
    from metagen_ppl.engine import api

    budget = {"em": dict(max_iter=2), "svi": dict(num_steps=2), "svi-normal": dict(num_steps=2),
              "mcmc": dict(num_samples=2, warmup_steps=1, num_chains=1)}[method]
    return api.fit("baseline", data, k, method, **dict(budget, **kw))


X = torch.tensor(POINTS, dtype=F64)
API_FIT_CASES = [
    ("x-NaN", lambda: {"x": torch.tensor([[0.0, 0, float("nan")]] * 3, dtype=F64)}, 1, {}, DataError, "NaN or inf"),
    ("x-inf", lambda: {"x": torch.tensor([[0.0, 0, float("inf")]] * 3, dtype=F64)}, 1, {}, DataError, "NaN or inf"),
    ("x-empty", lambda: {"x": torch.zeros(0, 3, dtype=F64)}, 1, {}, DataError, "N = 0"),
    ("x-1d", lambda: {"x": torch.zeros(5, dtype=F64)}, 1, {}, DataError, "shape (N, D)"),
    ("x-3d", lambda: {"x": torch.zeros(5, 3, 1, dtype=F64)}, 1, {}, DataError, "shape (N, D)"),
    ("x-no-columns", lambda: {"x": torch.zeros(5, 0, dtype=F64)}, 1, {}, DataError, "no coordinates"),
    ("x-integer", lambda: {"x": torch.ones(5, 3, dtype=torch.long)}, 1, {}, DataError, "floating-point"),
    ("x-bool", lambda: {"x": torch.ones(5, 3, dtype=torch.bool)}, 1, {}, DataError, "floating-point"),
    ("x-list", lambda: {"x": POINTS}, 1, {}, DataError, "tensor of shape (N, D)"),
    ("x-numpy", lambda: {"x": X.numpy()}, 1, {}, DataError, "tensor of shape (N, D)"),
    ("data-None", lambda: None, 1, {}, DataError, "non-empty dict"),
    ("data-empty-dict", lambda: {}, 1, {}, DataError, "non-empty dict"),
    ("K-larger-than-N", lambda: {"x": X}, 7, {}, DataError, "exceeds the number of observations N = 6"),
    ("K-zero", lambda: {"x": X}, 0, {}, DataError, "at least 1"),
    ("K-negative", lambda: {"x": X}, -1, {}, DataError, "at least 1"),
    ("K-float", lambda: {"x": X}, 2.0, {}, DataError, "must be an integer"),
    ("K-bool", lambda: {"x": X}, True, {}, DataError, "must be an integer"),
    ("scale-negative", lambda: {"x": X}, 2, {"options": {"scale": -1.0}}, DataError, "scale=-1.0: must be > 0"),
    ("scale-NaN", lambda: {"x": X}, 2, {"options": {"scale": float("nan")}}, DataError,
     "scale=nan: must be a finite number"),
    ("option-unknown", lambda: {"x": X}, 2, {"options": {"bogus": 1}}, ModelError, "bogus"),
]


@pytest.mark.parametrize("method", ["em", "svi", "svi-normal", "mcmc"])
@pytest.mark.parametrize("data, k, kw, exc, needle", [c[1:] for c in API_FIT_CASES], ids=[c[0] for c in API_FIT_CASES])
def test_api_fit_rejects(method, data, k, kw, exc, needle):
    with pytest.raises(exc, match=None) as e:
        _fit(method, data(), k, **kw)
    assert needle in str(e.value)


def test_api_fit_unknown_method():
    from metagen_ppl.engine import api

    with pytest.raises(MetagenError, match="unknown method 'bogus'"):
        api.fit("baseline", {"x": X}, 2, "bogus")


# Cases the inference engines check themselves (the CLI also rejects each of them up front).
ENGINE_CASES = [
    ("em-weights-wrong-length", "em", {"x": X}, 2, {"options": {"weights": [1.0]}}, "weights has 1 entries"),
    ("mcmc-weights-wrong-length", "mcmc", {"x": X}, 2, {"options": {"weights": [1.0]}}, "weights has 1 entries"),
    ("em-tol-negative", "em", {"x": X}, 2, {"tol": -1.0}, "tol must be"),
    ("em-max-iter-float", "em", {"x": X}, 2, {"max_iter": 1.5}, "max_iter must be an integer, at least 1"),
    ("svi-lr-negative", "svi", {"x": X}, 2, {"lr": -1.0}, "lr must be a positive"),
    ("svi-lr-NaN", "svi", {"x": X}, 2, {"lr": float("nan")}, "lr must be a positive"),
    ("mcmc-max-tree-depth-zero", "mcmc", {"x": X}, 2, {"max_tree_depth": 0}, "max_tree_depth must be"),
    ("mcmc-target-accept-1.5", "mcmc", {"x": X}, 2, {"target_accept_prob": 1.5}, "target_accept_prob must be"),
]


@pytest.mark.parametrize("method, data, k, kw, needle", [c[1:] for c in ENGINE_CASES],
                         ids=[c[0] for c in ENGINE_CASES])
def test_api_engine_checks(method, data, k, kw, needle):
    with pytest.raises(MetagenError) as e:
        _fit(method, data, k, **kw)
    assert needle in str(e.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 2 draws: divergences are expected and reported
def test_mcmc_with_fewer_than_four_draws_runs():
    """Pyro's R-hat needs >= 4 draws; a shorter run still returns (divergences from the sampler's record)."""
    res = _fit("mcmc", {"x": X}, 2, num_samples=2, warmup_steps=2, num_chains=1)
    assert res.n_iter == 2
    assert len(res.info["divergences"]) == 1 and res.info["divergences"][0] >= 0


def _cat_data(o=None, x=X):
    return {"x": x, "o": torch.tensor([0, 0, 1, 1, 2, 2]) if o is None else o}


def _categories(fn_name="fit_categorical", **kw):
    from metagen_ppl.models.categorical import strategies as categories

    fn = getattr(categories, fn_name)
    budget = {"fit_categorical": dict(max_iter=2), "fit_categorical_svi": dict(num_steps=2),
              "fit_categorical_mcmc": dict(num_samples=2, warmup_steps=1, num_chains=1)}[fn_name]
    return lambda data, k, **extra: fn(data, k, **dict(budget, **kw, **extra))


CATEGORIES_CASES = [
    ("o-missing", {"x": X}, 2, {}, "cannot tell the number of categories"),
    ("o-float", _cat_data(torch.tensor([0.0, 0, 1, 1, 2, 2])), 2, {}, "integer category indices"),
    ("o-negative", _cat_data(torch.tensor([0, 0, 1, 1, 2, -1])), 2, {}, "out of range"),
    ("o-2d", _cat_data(torch.zeros(6, 1, dtype=torch.long)), 2, {}, "1-d tensor"),
    ("o-wrong-length", _cat_data(torch.zeros(4, dtype=torch.long)), 2, {}, "data['o'] has 4"),
    ("o-out-of-range", _cat_data(), 2, {"options": {"num_categories": 2}}, "data['o'][4] = 2"),
    ("x-NaN", _cat_data(x=torch.full((6, 3), float("nan"), dtype=F64)), 2, {}, "NaN or inf"),
    ("K-larger-than-N", _cat_data(), 7, {}, "exceeds the number of observations"),
    ("K-zero", _cat_data(), 0, {}, "at least 1"),
    ("strategy-unknown", _cat_data(), 2, {"strategy": "bogus"}, "unknown category strategy"),
    ("proposal-unknown", _cat_data(), 2, {"strategy": "sample", "proposal": "bogus"}, "unknown proposal"),
    ("samples-zero", _cat_data(), 2, {"strategy": "sample", "num_category_samples": 0}, "num_category_samples"),
    ("confusion-rows", _cat_data(), 2, {"options": {"confusion": [[0.5, 0.6, 0], [0, 1, 0], [0, 0, 1]]}}, "sum to 1"),
    ("confusion-NaN", _cat_data(), 2, {"options": {"confusion": [[float("nan"), 1, 0], [0, 1, 0], [0, 0, 1]]}},
     "NaN or inf"),
    ("scale-negative", _cat_data(), 2, {"options": {"scale": -1.0}}, "scale=-1.0: must be > 0"),
    ("num_categories-zero", _cat_data(), 2, {"options": {"num_categories": 0}}, "num_categories=0"),
    ("model-without-categories", _cat_data(), 2, {"model": "baseline"}, "no per-object category sites"),
    ("enumerate-too-large", _cat_data(), 6, {"strategy": "enumerate", "options": {"num_categories": 5},
                                             "max_configs": 100}, "C^K = 5^6"),
]


@pytest.mark.parametrize("data, k, kw, needle", [c[1:] for c in CATEGORIES_CASES],
                         ids=[c[0] for c in CATEGORIES_CASES])
def test_api_fit_categorical_rejects(data, k, kw, needle):
    with pytest.raises(MetagenError) as e:
        _categories()(data, k, **kw)
    assert needle in str(e.value)


@pytest.mark.parametrize("fn_name", ["fit_categorical_svi", "fit_categorical_mcmc"])
@pytest.mark.parametrize("data, k, needle", [
    ({"x": X}, 2, "cannot tell the number of categories"),
    (_cat_data(torch.tensor([0, 0, 1, 1, 2, -1])), 2, "out of range"),
    (_cat_data(), 7, "exceeds the number of observations"),
], ids=["o-missing", "o-negative", "K-larger-than-N"])
def test_fit_categorical_svi_mcmc_reject(fn_name, data, k, needle):
    with pytest.raises(MetagenError) as e:
        _categories(fn_name)(data, k)
    assert needle in str(e.value)


# --------------------------------------------------------------------------- io
@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    ("", "is empty"),
    ("  \n", "is empty"),
    ("{", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
], ids=["missing", "empty", "whitespace-only", "invalid", "not-utf8"])
def test_load_json_rejects(tmp_path, content, needle):
    from metagen_ppl.io import load_json

    path = tmp_path / "f.json" if content is None else write(tmp_path, "f.json", content)
    with pytest.raises(DataError) as e:
        load_json(path)
    assert needle in str(e.value) and "f.json" in str(e.value)


def test_load_json_rejects_non_path_and_accepts_bom(tmp_path):
    from metagen_ppl.io import load_json

    with pytest.raises(DataError, match="file name"):
        load_json(None)
    assert load_json(write(tmp_path, "bom.json", b"\xef\xbb\xbf" + json.dumps(GOOD).encode())) == GOOD


@pytest.mark.parametrize("obj, needle", [
    ([1, 2], "JSON object"),
    (None, "JSON object"),
    ("abc", "JSON object"),
    ({"observations": [[0, 0, float("nan")]]}, "contains nan"),
    (json.loads('{"observations": [[0, 0, 1e400]]}'), "contains inf"),
    ({"observations": [[0, 0, 10 ** 400]]}, "contains inf"),
    ({"observations": [[0, 0, -10 ** 400]]}, "contains -inf"),
    ({"observations": [[0, 0, 0]], "categories": [-1]}, "category 0 is -1"),
], ids=["list", "None", "string", "NaN", "1e400", "huge-int", "huge-negative-int", "category-negative"])
def test_data_from_json_rejects(obj, needle):
    from metagen_ppl.io import data_from_json

    with pytest.raises(DataError) as e:
        data_from_json(obj, source="f.json")
    assert needle in str(e.value) and "f.json" in str(e.value)


def test_num_objects_from_json_rejects_zero():
    from metagen_ppl.io import num_objects_from_json

    with pytest.raises(DataError, match="f.json: 'num_objects' must be at least 1"):
        num_objects_from_json({"num_objects": 0}, "f.json")


@pytest.mark.parametrize("where, needle", [
    (lambda t: t, "is a directory"),
    (lambda t: t / "file.json" / "x.json", "a file is in the way"),
], ids=["directory", "under-regular-file"])
def test_save_data_bad_path(tmp_path, where, needle):
    from metagen_ppl.io import save_data

    write(tmp_path, "file.json", GOOD)
    with pytest.raises(DataError, match=needle):
        save_data(where(tmp_path), GOOD)


# --------------------------------------------------------------------------- loaders
@pytest.mark.parametrize("call, needle", [
    (lambda s: s.parse_scenes({}), "JSON list of scenes"),
    (lambda s: s.parse_scenes([]), "no scenes"),
    (lambda s: s.parse_scenes(scenes(), score_threshold=float("nan")), "score_threshold"),
    (lambda s: s.parse_scenes(scenes(), top_n=-1), "top_n"),
    (lambda s: s.parse_scenes(scenes(), box=((0, 0, 0), (0, 0, 0))), "upper > lower"),
    (lambda s: s.parse_scenes(scenes(), box=((0, 0), (1, 1))), "box must be"),
    (lambda s: s.parse_V(None), "JSON object"),
    (lambda s: s.parse_V({"detection_rate": [1, 2], "hallucination_rate": [1] * 5}), "2 values, expected 5"),
    (lambda s: s.parse_V({"detection_rate": "x", "hallucination_rate": [1] * 5}), "dict by category name"),
    (lambda s: s.load_scenes("/nonexistent/scenes.json"), "does not exist"),
], ids=["dict", "empty-list", "threshold-NaN", "top_n-negative", "box-empty", "box-2d", "V-None",
        "V-wrong-length", "V-string", "missing-file"])
def test_scene_loader_rejects(call, needle):
    from metagen_ppl.domain import scenes as scenes_mod

    with pytest.raises(DataError, match=None) as e:
        call(scenes_mod)
    assert needle in str(e.value)


def test_load_scenes_names_the_file(tmp_path):
    from metagen_ppl.domain.scenes import load_scenes

    path = write(tmp_path, "scenes.json", mutated(scenes, _set([1, *DET, "position", 0], [0, 0, float("nan")])))
    with pytest.raises(DataError, match=r"scenes\.json: scene 1 \(path '001'\), frame 0: .*not finite"):
        load_scenes(path)


@pytest.mark.parametrize("call, needle", [
    (lambda m: m.parse_videos({}), "JSON list of videos"),
    (lambda m: m.parse_videos([]), "no videos"),
    (lambda m: m.parse_videos(videos(), score_threshold="x"), "score_threshold"),
    (lambda m: m.parse_videos(videos(), top_n=-1), "top_n"),
    (lambda m: m.load_videos("/nonexistent/videos.json"), "does not exist"),
    (lambda m: m.batch_videos([]), "at least one video"),
], ids=["dict", "empty-list", "threshold-string", "top_n-negative", "missing-file", "batch-empty"])
def test_video_loader_rejects(call, needle):
    from metagen_ppl.domain import metagen_data

    with pytest.raises(DataError) as e:
        call(metagen_data)
    assert needle in str(e.value)


def test_load_videos_names_the_file(tmp_path):
    from metagen_ppl.domain.metagen_data import load_videos

    path = write(tmp_path, "videos.json", mutated(videos, _pop([1, "views", 2, "camera"])))
    with pytest.raises(DataError, match=r"videos\.json: video 1 \(path '001'\), frame 2: missing field 'camera'"):
        load_videos(path)


# --------------------------------------------------------------------------- metacognition / detector
_DEFAULT = object()


def _meta(sc=_DEFAULT, **kw):
    from metagen_ppl.models.detector.fit import fit_metacognition

    kw = dict(dict(max_rounds=1, max_iter=2, max_objects=2), **kw)
    return fit_metacognition(scenes() if sc is _DEFAULT else sc, **kw)


V_OK = {"rates": [1.0] * 5, "hallucination": [0.2] * 5}
META_API_CASES = [
    ("empty-list", dict(sc=[]), "no scenes"),
    ("None", dict(sc=None), "JSON list of scenes, got NoneType"),
    ("mode-unknown", dict(mode="bogus"), "unknown mode"),
    ("dict", dict(sc={"observations": POINTS}), "JSON list of scenes"),
    ("max_objects-zero", dict(max_objects=0), "max_objects must be an integer >= 1"),
    ("max_iter-float", dict(max_iter=1.5), "max_iter must be an integer"),
    ("tol-negative", dict(tol=-1.0), "tol must be a finite number >= 0"),
    ("tol-NaN", dict(tol=float("nan")), "tol must be a finite number >= 0"),
    ("svi_lr-negative", dict(inner="svi", svi_lr=-1.0), "svi_lr must be a finite number > 0"),
    ("scale-negative", dict(scale=-1.0), "scale must be a positive number"),
    ("scale-NaN", dict(scale=float("nan")), "scale must be a positive number"),
    ("inner-unknown", dict(inner="bogus"), "unknown inner"),
    ("estep-unknown", dict(estep="bogus"), "unknown estep"),
    ("fixed-without-V", dict(mode="fixed"), "needs V"),
    ("V-with-learn", dict(V=V_OK), "only used with mode='fixed'"),
    ("V-negative-rate", dict(mode="fixed", V=dict(V_OK, rates=[-1.0] * 5)), "'chair' is -1.0"),
    ("V-NaN-rate", dict(mode="fixed", V=dict(V_OK, hallucination=[float("nan")] * 5)), "finite and > 0"),
    ("V-too-short", dict(mode="fixed", V=dict(V_OK, rates=[1.0] * 3)), "3 values but there are 5 categories"),
    ("V-negative-scale", dict(mode="fixed", V=dict(V_OK, scale=-1.0)), "scale must be a positive number"),
    ("V-list", dict(mode="fixed", V=[1, 2]), "V must be a dict"),
    ("V-json-unknown-category", dict(mode="fixed", V={"detection_rate": {"sofa": 1.0}, "hallucination_rate": {}}),
     "unknown category 'sofa'"),
    ("num_categories-too-small", dict(options={"num_categories": 2}), "num_categories = 2"),
    ("num_categories-zero", dict(options={"num_categories": 0}), "num_categories=0"),
    ("rate_prior_shape-negative", dict(options={"rate_prior_shape": -1.0}), "rate_prior_shape=-1.0: must be > 0"),
    ("count_prior_p-above-1", dict(options={"count_prior_p": 2.0}), "count_prior_p=2.0: must be in (0, 1)"),
    ("scene-NaN", dict(sc=mutated(scenes, _set([0, *DET, "position", 0], [float("nan"), 0, 0]))),
     "scene 0 (path '000'), frame 0"),
]


@pytest.mark.parametrize("kw, needle", [c[1:] for c in META_API_CASES], ids=[c[0] for c in META_API_CASES])
def test_fit_metacognition_rejects(kw, needle):
    with pytest.raises(MetagenError) as e:
        _meta(**kw)
    assert needle in str(e.value)


def test_fit_metacognition_bad_output_path(tmp_path):
    write(tmp_path, "file.json", GOOD)
    with pytest.raises(DataError, match="a file is in the way"):
        _meta(out=tmp_path / "file.json" / "fit.json")


@pytest.mark.parametrize("sc", [mutated(scenes, _no_detections(None)), mutated(scenes, _no_detections(0))],
                         ids=["no-detections-anywhere", "one-scene-without-detections"])
def test_fit_metacognition_accepts_scenes_without_detections(sc):
    res = _meta(sc)
    assert math.isfinite(res.log_likelihood) and len(res.scenes) == 2


@pytest.mark.parametrize("kw, needle", [
    (dict(scale=-1.0), "scale"),
    (dict(scale=float("nan")), "scale"),
    (dict(num_categories=0), "num_categories must be in 1..5"),
    (dict(num_categories=9), "num_categories must be in 1..5"),
    (dict(box=((0, 0, 0), (0, 0, 0))), "box must be"),
    (dict(rates=[-1.0] * 5), "'chair' is -1.0"),
    (dict(num_scenes=1.5), "num_scenes must be an integer"),
    (dict(num_frames=0), "at least 1"),
    (dict(emission="gauss"), "emission"),
], ids=["scale-negative", "scale-NaN", "num_categories-zero", "num_categories-9", "box-empty", "rates-negative",
        "num_scenes-float", "zero-frames", "emission-unknown"])
def test_detector_simulate_rejects(kw, needle):
    from metagen_ppl.models import detector

    args = dict(num_scenes=1, num_frames=1, seed=0)
    args.update(kw)
    with pytest.raises(DataError) as e:
        detector.simulate(args.pop("num_scenes"), args.pop("num_frames"), args.pop("seed"), **args)
    assert needle in str(e.value)


# --------------------------------------------------------------------------- evaluate (function)
@pytest.mark.parametrize("setup, kw, needle", [
    (lambda t: t / "missing.json", {}, "does not exist"),
    (lambda t: write(t, "v.json", mutated(videos, lambda o: [v.pop("detections") for vid in o for v in vid["views"]])),
     {}, "no 'detections'"),
    (lambda t: write(t, "v.json", videos()), {"method": "bogus"}, "unknown method"),
    (lambda t: write(t, "v.json", videos()), {"learn_on": "test"}, "unknown learn_on"),
    (lambda t: write(t, "v.json", videos()), {"max_objects": 0}, "max_objects"),
    (lambda t: write(t, "v.json", videos()), {"svi_lr": float("nan")}, "svi_lr"),
    (lambda t: write(t, "v.json", videos()), {"num_threads": 0}, "num_threads"),
    (lambda t: write(t, "v.json", videos()), {"out_dir": "FILE"}, "is an existing file"),
], ids=["missing-file", "no-detections", "method-unknown", "learn_on-unknown", "max_objects-zero", "svi_lr-NaN",
        "num_threads-zero", "out-is-file"])
def test_evaluate_function_rejects(tmp_path, setup, kw, needle):
    from metagen_ppl.apps.evaluate import evaluate

    data = setup(tmp_path)
    out = tmp_path / "out"
    if kw.get("out_dir") == "FILE":
        kw = {}
        out = data
    with pytest.raises(MetagenError) as e:
        evaluate(data, out, progress=False, plots=0, lesioned=False, ground_truth_V=False, **kw)
    assert needle in str(e.value)


# --------------------------------------------------------------------------- camera
def _cam(name, *args, **kw):
    from metagen_ppl.domain import camera

    return getattr(camera, name)(*args, **kw)


Z3, O3 = torch.zeros(3), torch.tensor([1.0, 0.5, 1.0])
CAMERA_CASES = [
    ("project-points-2d", lambda: _cam("project", torch.zeros(4, 2), Z3, O3), "points must have shape (..., 3)"),
    ("project-points-scalar", lambda: _cam("project", torch.tensor(1.0), Z3, O3), "points must have shape"),
    ("project-cam-2", lambda: _cam("project", torch.zeros(4, 3), torch.zeros(2), O3), "cam must have shape"),
    ("project-look-4", lambda: _cam("project", torch.zeros(4, 3), Z3, torch.ones(4)), "look must have shape"),
    ("project-string", lambda: _cam("project", "abc", Z3, O3), "points must be a tensor"),
    ("project-ragged-list", lambda: _cam("project", [[1, 2, 3], [1, 2]], Z3, O3), "points must be a tensor"),
    ("project-shapes-do-not-broadcast", lambda: _cam("project", torch.zeros(4, 3), torch.zeros(5, 3),
                                                     torch.ones(5, 3)), "do not broadcast"),
    ("camera_frame-mismatch", lambda: _cam("camera_frame", torch.zeros(2, 3), torch.ones(3, 3)), "do not broadcast"),
    ("visible-pixels-3", lambda: _cam("visible", torch.zeros(4, 3), torch.zeros(4)), "pixels must have shape (..., 2)"),
    ("visible-depth-shape", lambda: _cam("visible", torch.zeros(4, 2), torch.zeros(5)), "do not broadcast"),
    ("pixel_to_ray-beyond-90-degrees", lambda: _cam("pixel_to_ray", torch.tensor([1000.0, 0.0]), Z3, O3),
     "viewing angle below 90 degrees"),
    ("pixel_to_ray-pixels-3", lambda: _cam("pixel_to_ray", torch.zeros(3), Z3, O3), "pixels must have shape"),
    ("pixel_to_ray-mismatch", lambda: _cam("pixel_to_ray", torch.zeros(4, 2), torch.zeros(5, 3), torch.ones(5, 3)),
     "do not broadcast"),
    ("triangulate-single-ray", lambda: _cam("triangulate", Z3, O3), "(..., N, 3)"),
    ("triangulate-2d", lambda: _cam("triangulate", torch.zeros(4, 2), torch.ones(4, 2)), "rays_origins must have"),
    ("triangulate-dirs-2d", lambda: _cam("triangulate", torch.zeros(4, 3), torch.ones(4, 2)), "rays_dirs must have"),
    ("triangulate-mismatch", lambda: _cam("triangulate", torch.zeros(4, 3), torch.ones(5, 3)), "do not broadcast"),
    ("triangulate-weights-shape", lambda: _cam("triangulate", torch.zeros(4, 3), torch.ones(4, 3),
                                               weights=torch.ones(5)), "weights of shape (5,)"),
    ("triangulate-weights-negative", lambda: _cam("triangulate", torch.randn(4, 3), torch.randn(4, 3),
                                                  weights=-torch.ones(4)), "non-negative"),
    ("triangulate-weights-NaN", lambda: _cam("triangulate", torch.randn(4, 3), torch.randn(4, 3),
                                             weights=torch.full((4,), float("nan"))), "finite"),
]


@pytest.mark.parametrize("call, needle", [c[1:] for c in CAMERA_CASES], ids=[c[0] for c in CAMERA_CASES])
def test_camera_rejects_bad_shapes(call, needle):
    with pytest.raises(DataError) as e:
        call()
    assert needle in str(e.value)


def test_camera_accepts_empty_and_integer_points():
    pix, depth = _cam("project", torch.zeros(0, 3), Z3, O3)
    assert pix.shape == (0, 2) and depth.shape == (0,)
    pix, depth = _cam("project", torch.ones(2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                      torch.tensor([2, 1, 2]))
    assert pix.is_floating_point() and torch.isfinite(pix).all()
