"""Every ``metagen-ppl`` command of the README runs as printed, with small budgets.

The commands are read from the README's ``bash`` blocks (continuation lines
joined, comments dropped) and run in order, in-process through ``main([...])``,
in one temporary directory, so later commands find the files earlier ones
wrote (``data.json``, ``scenes.json``, ``my_variant.py`` ...). Each command gets
budget options appended (argparse keeps the last value of a repeated option);
nothing else is changed, except that the real detection files are replaced by
an excerpt of their first videos. A README command that stops working, or a
new one that nobody taught a budget, fails here.
"""

from __future__ import annotations

import json
import os
import shlex


from metagen_ppl.apps.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SHARED = "../shared/data/metagen2021/"
REAL = next((d for d in ("/work/shared/data/metagen2021", os.path.join(ROOT, "..", "shared", "data", "metagen2021"))
             if os.path.isfile(os.path.join(d, "data_labelled_retinanet.json"))), None)

#: options appended to each README command (by its subcommand; "fit mcmc" etc. by method), small enough
#: that the whole README runs in a minute or two
BUDGETS = {
    "simulate": [],
    "fit em": [],
    "fit svi": ["--num-steps", "30"],
    "fit svi-normal": ["--num-steps", "30"],
    # NUTS: a shallow tree (early warm-up builds the deepest trees; depth 3 halves a tiny run)
    "fit mcmc": ["--num-samples", "10", "--warmup", "10", "--max-tree-depth", "3"],
    "demo": ["--num-obs", "120", "--num-inits", "1", "--svi-steps", "30", "--mcmc-samples", "10",
             "--mcmc-warmup", "10", "--mcmc-max-tree-depth", "3"],
    "compare": ["--em-inits", "1", "--svi-steps", "30", "--mcmc-samples", "10", "--mcmc-warmup", "10",
                "--mcmc-max-tree-depth", "3", "--category-samples", "4"],
    # two worker processes: the pool's pickling path (the crash of issue 12)
    "compare-categories": ["--seeds", "1", "--settings", "2,0.75,100", "--methods", "em-mstep,em-enumerate,mcmc",
                           "--mcmc-samples", "5", "--mcmc-warmup", "5", "--jobs", "2"],
    "metacognition simulate": ["--num-scenes", "4", "--num-frames", "8"],
    "metacognition fit": ["--max-rounds", "2"],
    "evaluate": ["--plots", "1"],
    "convert-coco": [],
}


def readme_commands() -> list:
    """The ``metagen-ppl`` command lines of the README's bash blocks, as argument lists."""
    text = open(README, encoding="utf-8").read()
    out = []
    for block in text.split("```bash\n")[1:]:
        body = block.split("```", 1)[0].replace("\\\n", " ")
        for line in body.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "metagen-ppl":
                out.append(argv[1:])
    return out


def budget_key(argv) -> str:
    if argv[0] == "metacognition":
        return f"metacognition {argv[1]}"
    if argv[0] == "fit":
        method = argv[argv.index("--method") + 1] if "--method" in argv else "em"
        return f"fit {method}"
    return argv[0]


def _readme_file(marker: str) -> str:
    text = open(README, encoding="utf-8").read()
    assert marker in text, marker
    return text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_lists_the_commands_this_test_runs():
    cmds = readme_commands()
    kinds = {budget_key(a) for a in cmds}
    # every kind of command has a budget here, and the README shows each kind of command
    assert kinds <= set(BUDGETS), kinds - set(BUDGETS)
    assert set(BUDGETS) <= kinds, set(BUDGETS) - kinds
    assert len(cmds) >= 25


def _excerpt(src: str, dst: str, videos: int = 3) -> None:
    with open(src, encoding="utf-8") as fh:
        obj = json.load(fh)
    with open(dst, "w", encoding="utf-8") as fh:
        json.dump(obj[:videos], fh)


def _coco_inputs(folder) -> None:
    """The inputs of the README's ``convert-coco`` line: three simulated videos through its pinhole camera as
    a detector's COCO results, the per-image poses and a COCO annotation file's categories."""
    from metagen_ppl.models.projective import simulate

    camera = {"model": "pinhole", "fx": 525, "fy": 525, "cx": 319.5, "cy": 239.5, "width": 640, "height": 480}
    dets, poses = [], []
    for v, video in enumerate(simulate(3, 6, seed=0, camera=camera)):        # COCO ids as labels
        for t, view in enumerate(video["views"]):
            image_id = 100 * v + t
            poses.append({"image_id": image_id, "video": video["path"], "frame": t,
                          "camera": [view["camera"][k] for k in "xyz"], "lookat": [view["lookat"][k] for k in "xyz"]})
            d = view["detections"]
            for score, label, tl, br in zip(d["scores"], d["labels"], d["top_left"], d["bottom_right"]):
                dets.append({"image_id": image_id, "category_id": label, "score": score,
                             "bbox": [tl[0], tl[1], br[0] - tl[0], br[1] - tl[1]]})
    names = {1: "person", 62: "chair", 64: "potted plant", 72: "tv", 28: "umbrella", 51: "bowl"}
    for name, obj in (("det.json", dets), ("poses.json", poses),
                      ("instances_val2017.json", {"categories": [{"id": i, "name": n} for i, n in names.items()]})):
        (folder / name).write_text(json.dumps(obj))


def test_every_readme_command_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _coco_inputs(tmp_path)
    (tmp_path / "my_variant.py").write_text(_readme_file("<!-- README example: my_variant.py"))
    (tmp_path / "student_t_pixels.py").write_text(_readme_file("<!-- README example: student_t_pixels.py"))
    real = {}
    if REAL is not None:
        for name in os.listdir(REAL):
            if name.endswith(".json"):
                real[SHARED + name] = str(tmp_path / f"excerpt_{name}")
                _excerpt(os.path.join(REAL, name), real[SHARED + name])
    ran, skipped = [], []
    for argv in readme_commands():
        if any(a.startswith(SHARED) for a in argv):
            if not all(a in real for a in argv if a.startswith(SHARED)):
                skipped.append(argv)  # the real data is not in this checkout (see the README)
                continue
            argv = [real.get(a, a) for a in argv]
        full = argv + BUDGETS[budget_key(argv)]
        code = main(full)
        out, err = capsys.readouterr()
        assert code == 0, (" ".join(full), err[-2000:])
        assert "Traceback" not in err, (full, err)
        if "--out" in argv:
            target = argv[argv.index("--out") + 1]
            assert os.path.exists(target), (full, target)
        ran.append(argv)
    # without the real data only the evaluate lines may be left out
    assert all(a[0] == "evaluate" for a in skipped), skipped
    assert len(ran) + len(skipped) == len(readme_commands())
    assert os.path.isfile("cmp-baseline/report.html") and os.path.isfile("metagen-demo/report.md")
