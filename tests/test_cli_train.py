"""`lmk-studio train` / `predict` from the terminal: progress bar, Ctrl-C leaves a resumable run,
--images adds and predicts new images, bad input is one clear line and exit code 2."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lmk_studio import cli, commands
from lmk_studio.commands import train_cmds
from lmk_studio.commands.train_cmds import ProgressBar
from lmk_studio.engine.common import ProgressEvent

# Stage I on 6 phantom images of 128 x 128 in a few seconds: the learned (whole-image) pass only.
TINY_S1 = {"name": "tiny", "start": "learned", "torch_threads": 2,
           "coarse": {"size": [48, 48], "backbone": "small_cnn", "width": 4, "d_model": 16,
                      "heads": 2, "n_layers": 1, "global_type": "none", "epochs": 3,
                      "steps_per_epoch": 1, "batch": 2, "lr": 0.001, "sigma": 2.0,
                      "eval_every": 3}}


def main(argv: list[str]) -> int:
    """cli.main; while cli.py's optional top-level positional (`project_to_open`) swallows the
    command name, parse with the command's own sub-parser and handle errors as cli.main does."""
    parser = cli._build_parser()
    try:
        works = parser.parse_args(["info", "x"]).command == "info"
    except SystemExit:
        works = False
    if works:
        return cli.main(argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    ns = sub.choices[argv[0]].parse_args(argv[1:])
    ns.command = argv[0]
    try:
        return int(getattr(commands, f"cmd_{argv[0]}")(ns) or 0)
    except train_cmds.LmkError as exc:
        print(f"lmk-studio: error: {exc}", file=sys.stderr)
        return 2


# ---- no store needed --------------------------------------------------------------------------
def test_progress_bar_rewrites_one_line_per_stage() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, min_interval=0.0)
    bar(ProgressEvent("stage1-load", 0, 1, 1, 2, message="loading 001.png"))
    bar(ProgressEvent("stage1-coarse", 0, 2, 1, 2, losses={"total": 0.5, "esim": 0.25},
                      eta_s=75.0))
    bar(ProgressEvent("stage1-coarse", 1, 2, 2, 2, losses={"total": 0.4}, eta_s=0.0))
    bar.close()
    text = out.getvalue()
    lines = text.split("\n")
    assert lines[0] == "\rstage1-load [##########----------]  50%  loading 001.png"
    assert "\rstage1-coarse" in lines[1] and "epoch 1/2 step 1/2" in lines[1]
    assert "ETA 01:15  total 0.5 esim 0.25" in lines[1]
    assert lines[1].rstrip().endswith("ETA 00:00  total 0.4") and "100%" in lines[1]
    assert text.endswith("\n")


def test_missing_project_is_one_clear_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nöt here.lmk"
    assert main(["train", str(missing), "--stage", "1"]) == 2
    err = capsys.readouterr().err
    assert "nöt here.lmk" in err and "not found" in err


def test_unavailable_device_is_a_user_error(tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["predict", str(tmp_path / "p.lmk"), "--method", "stage1",
                 "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_one_preset_file_serves_both_stages(tmp_path: Path) -> None:
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"stage1": TINY_S1, "stage2": {"steps": 4}}), encoding="utf-8")
    s1 = json.loads(Path(train_cmds._preset_for("1", str(both))).read_text(encoding="utf-8"))
    s2 = json.loads(Path(train_cmds._preset_for("2", str(both))).read_text(encoding="utf-8"))
    assert s1["coarse"]["epochs"] == 3 and s2 == {"steps": 4}
    only1 = tmp_path / "s1.json"
    only1.write_text(json.dumps(TINY_S1), encoding="utf-8")
    assert train_cmds._preset_for("1", str(only1)) == str(only1)
    assert train_cmds._preset_for("2", str(only1)) is None      # stage 2 keeps its default
    assert train_cmds._preset_for("2", "quick") == "quick"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(train_cmds.LmkError, match="bad.json"):
        train_cmds._preset_for("1", str(bad))


# ---- on a phantom project -----------------------------------------------------------------------
@pytest.fixture()
def project(tmp_path: Path) -> SimpleNamespace:
    pytest.importorskip("lmk_studio.core.store", reason="core.store not committed yet")
    phantoms = pytest.importorskip("lmk_studio.core.phantoms",
                                   reason="core.phantoms not committed yet")
    path = phantoms.write_demo_project(tmp_path / "démo", n=6, size=(128, 128), seed=0)
    preset = tmp_path / "tiny_s1.json"
    preset.write_text(json.dumps(TINY_S1), encoding="utf-8")
    return SimpleNamespace(path=Path(path), preset=preset, dir=tmp_path)


def _open(path: Path):
    from lmk_studio.core.store import Project

    return Project.open(path)


def test_train_stage1_writes_predictions_and_draws_progress(project, capsys) -> None:
    from lmk_studio.core.points import Source, Status

    code = main(["train", str(project.path), "--stage", "1", "--preset", str(project.preset),
                 "--device", "cpu", "--seed", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "\rstage1-coarse" in err and "epoch 3/3" in err and "ETA" in err
    assert "finished" in err
    with _open(project.path) as proj:
        run = [r for r in proj.runs() if r.kind == "stage1"][-1]
        assert run.status == "finished" and run.config["seed"] == 1
        ex = proj.exemplar_id
        for rec in proj.images():
            pts = proj.points(rec.id)
            if rec.id == ex:
                assert all(p.status is Status.EXEMPLAR for p in pts if p.placed)
                continue
            placed = [p for p in pts if p.placed]
            assert placed and all(p.source is Source.STAGE1 and p.status is Status.PREDICTED
                                  and 0.0 <= p.confidence <= 1.0 for p in placed)


def test_ctrl_c_cancels_cleanly_and_resume_finishes(project, capsys, monkeypatch) -> None:
    real_call = ProgressBar.__call__
    sent = {"n": 0}

    def call(self, ev) -> None:
        real_call(self, ev)
        if ev.losses and ev.epoch == 1 and not sent["n"]:
            sent["n"] = 1
            os.kill(os.getpid(), signal.SIGINT)        # what Ctrl-C does

    monkeypatch.setattr(ProgressBar, "__call__", call)
    args = ["train", str(project.path), "--stage", "1", "--preset", str(project.preset),
            "--device", "cpu"]
    assert main(args) == train_cmds.EXIT_CANCELLED
    err = capsys.readouterr().err
    assert "Ctrl-C: stopping" in err and "--resume" in err
    with _open(project.path) as proj:
        first = [r for r in proj.runs() if r.kind == "stage1"][-1]
        assert first.status == "cancelled"
        # stored relative to the project's model folder, so a moved project finds it
        assert not Path(first.checkpoints["dir"]).is_absolute()
        assert Path(str(project.path) + ".models", first.checkpoints["dir"], "coarse.pt").exists()
    monkeypatch.setattr(ProgressBar, "__call__", real_call)
    assert signal.getsignal(signal.SIGINT) is not None
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    with _open(project.path) as proj:
        second = [r for r in proj.runs() if r.kind == "stage1"][-1]
        assert second.id != first.id and second.status == "finished"
        assert second.config["resumed_from"] == first.checkpoints["dir"]


def test_predict_stage1_adds_new_images_and_predicts_them(project, capsys) -> None:
    import cv2

    from lmk_studio.core.phantoms import make_phantom_set
    from lmk_studio.core.points import Source

    assert main(["predict", str(project.path), "--method", "stage1"]) == 2
    assert "train Stage I first" in capsys.readouterr().err
    assert main(["train", str(project.path), "--stage", "1", "--preset", str(project.preset),
                 "--device", "cpu"]) == 0
    new = project.dir / "néw images"
    new.mkdir()
    for k, ph in enumerate(make_phantom_set(3, size=(128, 128), seed=5)[1:]):
        cv2.imwrite(str(new / f"extra_{k}.png"), np.round(ph.image * 255).astype(np.uint8))
    (new / "broken.png").write_bytes(b"not a png at all")
    with _open(project.path) as proj:
        before = {r.id for r in proj.images()}
    capsys.readouterr()
    code = main(["predict", str(project.path), "--method", "stage1", "--images", str(new),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "broken.png" in err and "2 new image(s) added" in err
    with _open(project.path) as proj:
        added = [r for r in proj.images() if r.id not in before]
        assert sorted(r.name for r in added) == ["extra_0.png", "extra_1.png"]
        run = [r for r in proj.runs() if r.kind == "stage1-predict"][-1]
        assert run.status == "finished"
        for rec in added:
            placed = [p for p in proj.points(rec.id) if p.placed]
            assert len(placed) == len(proj.template)
            assert all(p.source is Source.STAGE1 and p.run_id == run.id for p in placed)


def test_corrupt_project_file_is_refused_untouched(tmp_path: Path, capsys) -> None:
    pytest.importorskip("lmk_studio.core.store", reason="core.store not committed yet")
    bad = tmp_path / "broken.lmk"
    bad.write_bytes(b"this is not a project" * 10)
    before = bad.read_bytes()
    assert main(["train", str(bad), "--stage", "1"]) == 2
    assert "broken.lmk" in capsys.readouterr().err
    assert bad.read_bytes() == before


def test_train_all_runs_preview_then_both_stages(project, capsys) -> None:
    s2 = json.loads((train_cmds.Path(__file__).resolve().parents[1] / "resources" / "presets"
                     / "stage2" / "quick.json").read_text(encoding="utf-8"))
    s2.update(steps=4, steps_per_epoch=2, calib_warps=1)
    both = project.dir / "both.json"
    both.write_text(json.dumps({"stage1": TINY_S1, "stage2": s2}), encoding="utf-8")
    code = main(["train", str(project.path), "--stage", "all", "--preset", str(both),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no classical preview yet" in err
    with _open(project.path) as proj:
        kinds = [(r.kind, r.status) for r in sorted(proj.runs(), key=lambda r: r.id)]
    assert kinds == [("classical", "finished"), ("stage1", "finished"), ("stage2", "finished")]
