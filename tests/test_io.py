"""The JSON exchange format: atomic writes, loading with clear errors, conversion to model data."""

from __future__ import annotations

import json
import os
import types

import pytest
import torch

from metagen_ppl.errors import DataError, MetagenError
from metagen_ppl.io import (atomic_write_json, atomic_write_text, data_from_json, load_json,
                            num_objects_from_json, save_data)
from metagen_ppl.engine.registry import load_model


def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "out.txt"  # missing parent directory is created
    atomic_write_text(p, "first")
    atomic_write_text(p, "second")
    assert p.read_text() == "second"
    assert os.listdir(p.parent) == ["out.txt"]


def test_atomic_write_json_handles_tensors_and_nonfinite(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"t": torch.tensor([[1.0, 2.0]]), "nan": float("nan"), "n": 3})
    assert json.loads(p.read_text()) == {"t": [[1.0, 2.0]], "nan": None, "n": 3}


def test_save_and_load_round_trip(tmp_path):
    obj = {"observations": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], "categories": [0, 2], "num_objects": 1,
           "truth": {"locs": [[1.0, 2.0, 3.0]]}}
    save_data(tmp_path / "d.json", obj)
    back = load_json(tmp_path / "d.json")
    assert back == obj
    data = data_from_json(back, source="d.json")
    assert data["x"].shape == (2, 3) and data["x"].dtype == torch.float64
    assert data["o"].dtype == torch.long and data["o"].tolist() == [0, 2]
    assert num_objects_from_json(back) == 1
    assert data_from_json(back, dtype=torch.float32)["x"].dtype == torch.float32


def test_load_json_missing_file(tmp_path):
    p = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json.*does not exist"):
        load_json(p)


def test_load_json_directory(tmp_path):
    with pytest.raises(DataError, match="directory"):
        load_json(tmp_path)


def test_load_json_malformed_names_file_line_column(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"observations": [[1, 2, 3],\n  [4, 5, ]]}')
    with pytest.raises(DataError) as e:
        load_json(p)
    msg = str(e.value)
    assert "bad.json" in msg and "line 2" in msg and "column" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("obj, pattern", [
    ([1, 2, 3], "JSON object"),
    ({}, "no 'observations'"),
    ({"observations": []}, "non-empty"),
    ({"observations": "abc"}, "non-empty list"),
    ({"observations": [[1, 2, 3], [1, 2]]}, "row 1 has 2 coordinates"),
    ({"observations": [[1, 2]]}, "3 coordinates"),
    ({"observations": [[1, 2, 3], 5]}, "row 1 must be"),
    ({"observations": [[1, 2, 3], [1, "a", 3]]}, "row 1 column 1 is not a number"),
    ({"observations": [[1, 2, 3], [1, True, 3]]}, "row 1 column 1 is not a number"),
    ({"observations": [[1, 2, 3], [1, None, 3]]}, "row 1 column 1 is not a number"),
    ({"observations": [[1, 2, 3], [1, 2, 3], [float("nan"), 2, 3]]}, "row 2 contains nan"),
    ({"observations": [[1, 2, float("inf")]]}, "row 0 contains inf"),
    ({"observations": [[1, 2, 3]], "categories": [0, 1]}, "2 entries but there are 1"),
    ({"observations": [[1, 2, 3]], "categories": [-1]}, "non-negative"),
    ({"observations": [[1, 2, 3]], "categories": [1.5]}, "category 0 must be"),
    ({"observations": [[1, 2, 3]], "categories": "ab"}, "list of integers"),
])
def test_data_from_json_rejects(obj, pattern):
    with pytest.raises(DataError, match=pattern) as e:
        data_from_json(obj, source="scene.json")
    assert str(e.value).startswith("scene.json: ")


def test_nan_in_file_names_row(tmp_path):
    p = tmp_path / "nan.json"
    p.write_text('{"observations": [[1, 2, 3], [NaN, 2, 3]]}')
    with pytest.raises(DataError, match=r"nan.json: observation row 1 contains nan"):
        data_from_json(load_json(p), source=str(p))


def test_num_objects_must_be_int():
    with pytest.raises(DataError, match="num_objects"):
        num_objects_from_json({"num_objects": "3"})
    assert num_objects_from_json({"observations": []}) is None


def test_dim_none_accepts_any_width():
    data = data_from_json({"observations": [[1.0, 2.0], [3.0, 4.0]]}, dim=None)
    assert data["x"].shape == (2, 2)


def test_model_hook_replaces_conversion():
    calls = []

    def hook(obj, dtype):
        calls.append(dtype)
        return {"x": torch.tensor(obj["points"], dtype=dtype)}

    spec = types.SimpleNamespace(name="custom", data_from_json=hook)
    data = data_from_json({"points": [[1, 2, 3]]}, spec, dtype=torch.float32)
    assert calls == [torch.float32] and data["x"].dtype == torch.float32

    with pytest.raises(DataError, match="f.json: model 'custom' could not read.*KeyError"):
        data_from_json({"observations": [[1, 2, 3]]}, spec, source="f.json")


def test_builtin_spec_without_hook_uses_default():
    spec = load_model("baseline")
    data = data_from_json({"observations": [[1, 2, 3]]}, spec)
    assert set(data) == {"x"}


def test_errors_are_metagen_errors():
    assert issubclass(DataError, MetagenError)
