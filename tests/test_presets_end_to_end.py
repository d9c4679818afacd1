"""Every bundled preset finishes through `lmk-studio train` on a phantom project.

Each test takes a bundled preset (Stage I or Stage II × quick / cpu / paper), keeps its structure
(which passes exist, global model, start, consensus, test-time adaptation, selection, cascade,
cross-consistency) and shrinks only sizes, widths and step counts, then runs it through the CLI
exactly as a user would. A preset that cannot finish fails here, not after minutes on a real
folder (the cpu preset once failed at the very end because its checkpoint folder was never made).
The paper preset's timm HRNet is swapped for a built-in backbone: creating it costs ~50 s here and
its weights are absent offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmk_studio import cli
from lmk_studio.core.resources import resource_path

PRESETS = ("quick", "cpu", "paper")


def _bundled(stage: str, name: str) -> dict:
    return json.loads(resource_path("presets", stage, f"{name}.json").read_text("utf-8"))


def shrink_stage1(d: dict) -> dict:
    """Same passes and switches, tiny sizes and one or two steps."""
    out = dict(d)
    if out.get("consensus", {}).get("k"):
        out["consensus"] = {**out["consensus"], "k": min(2, int(out["consensus"]["k"]))}
    for sec in ("coarse", "refine"):
        s = out.get(sec)
        if s is None:
            continue
        s = dict(s)
        if "size" in s:
            s["size"] = [48, 48]
        if str(s.get("backbone", "")).startswith("timm:"):
            s["backbone"] = "unet"
        s.update(width=min(int(s.get("width", 4)), 4), d_model=16, n_layers=1, batch=2,
                 steps_per_epoch=1, eval_every=1, n_local_infer=min(int(s.get("n_local_infer", 2)), 2))
        s["epochs"] = min(int(s.get("epochs", 1)), 2)  # 0 stays 0: a pass that never trains
        if "crop" in s:
            s["crop"] = 32
        if s.get("tta_steps"):
            s["tta_steps"] = 1
        out[sec] = s
    return out


def shrink_stage2(d: dict) -> dict:
    out = dict(d)
    if out["detector"].get("kind") == "hrnet":
        out["detector"] = {"kind": "unet", "base": 4, "depth": 2}
    else:
        out["detector"] = {**out["detector"], "base": 4, "depth": min(2, out["detector"]["depth"])}
    out.update(patch=32, steps=4, steps_per_epoch=2, batch_trusted=2, batch_pseudo=4,
               calib_warps=1, ramp_epochs=min(float(out.get("ramp_epochs", 1.0)), 1.0))
    out["scale"] = min(float(out.get("scale", 1.0)), 2.0)
    return out


@pytest.fixture(scope="module")
def previewed(tmp_path_factory) -> Path:
    """A 5-image phantom demo project (exemplar marked) with the classical preview done."""
    from lmk_studio.core.phantoms import write_demo_project

    root = tmp_path_factory.mktemp("presets")
    lmk = write_demo_project(root / "demo", n=5, size=(160, 128), seed=0)
    assert cli.main(["predict", str(lmk), "--method", "classical"]) == 0
    return lmk


def _copy_project(src: Path, dst_dir: Path) -> Path:
    """A private copy (project file only; images stay where the project names them)."""
    from lmk_studio.core.store import Project

    with Project.open(src) as proj:
        return proj.save_copy(dst_dir / src.name)


def _stage_points(lmk: Path, kind: str) -> tuple[int, dict]:
    from lmk_studio.core.store import Project

    with Project.open(lmk) as proj:
        runs = [r for r in proj.runs() if r.kind == kind]
        assert runs, f"no {kind} run recorded"
        run = max(runs, key=lambda r: r.id)
        assert run.status == "finished", (run.status, run.metrics)
        return run.metrics.get("points_written", 0), proj.predictions(run.id)


@pytest.mark.parametrize("name", PRESETS)
def test_stage1_preset_finishes_through_the_cli(name: str, previewed: Path, tmp_path: Path) -> None:
    lmk = _copy_project(previewed, tmp_path / "p")
    preset = tmp_path / f"{name}-tiny.json"
    preset.write_text(json.dumps(shrink_stage1(_bundled("stage1", name))), "utf-8")
    assert cli.main(["train", str(lmk), "--stage", "1", "--preset", str(preset),
                     "--device", "cpu"]) == 0
    written, preds = _stage_points(lmk, "stage1")
    assert written > 0 and len(preds) == 4  # the 4 images besides the exemplar
    pts = np.array([[p.x, p.y] for ps in preds.values() for p in ps], dtype=float)
    assert np.isfinite(pts).all() and (pts >= -1).all() and (pts[:, 0] <= 161).all()
    if _bundled("stage1", name).get("candidates"):
        from lmk_studio.core.store import Project

        with Project.open(lmk) as proj:
            run = max((r for r in proj.runs() if r.kind == "stage1"), key=lambda r: r.id)
            assert len(run.metrics["candidates"]["chosen_per_landmark"]) == len(proj.template)
    # the saved models predict again without training (the `predict --method stage1` path)
    assert cli.main(["predict", str(lmk), "--method", "stage1", "--all", "--device", "cpu"]) == 0
    written2, preds2 = _stage_points(lmk, "stage1-predict")
    assert written2 > 0 and len(preds2) == 4


@pytest.mark.parametrize("name", PRESETS)
def test_stage2_preset_finishes_through_the_cli(name: str, previewed: Path, tmp_path: Path) -> None:
    lmk = _copy_project(previewed, tmp_path / "p")
    preset = tmp_path / f"{name}-tiny.json"
    preset.write_text(json.dumps(shrink_stage2(_bundled("stage2", name))), "utf-8")
    assert cli.main(["train", str(lmk), "--stage", "2", "--preset", str(preset),
                     "--device", "cpu"]) == 0
    written, preds = _stage_points(lmk, "stage2")
    assert written > 0 and len(preds) == 4
    assert cli.main(["predict", str(lmk), "--method", "stage2", "--all", "--device", "cpu"]) == 0
    written2, preds2 = _stage_points(lmk, "stage2-predict")
    assert written2 > 0 and len(preds2) == 4


def test_shrinking_keeps_each_presets_structure() -> None:
    """The shrunk presets keep every pass and switch of the bundled ones."""
    for name in PRESETS:
        full, tiny = _bundled("stage1", name), shrink_stage1(_bundled("stage1", name))
        assert [k for k in full if full[k] is not None] == [k for k in tiny if tiny[k] is not None]
        for sec in ("coarse", "refine"):
            if full.get(sec):
                for key in ("global_type", "tta_select", "select_per_landmark"):
                    assert full[sec].get(key) == tiny[sec].get(key)
                assert (full[sec]["epochs"] == 0) == (tiny[sec]["epochs"] == 0)
        assert bool(full.get("consensus", {}).get("k")) == bool(tiny.get("consensus", {}).get("k"))
        f2, t2 = _bundled("stage2", name), shrink_stage2(_bundled("stage2", name))
        for key in ("selection", "cross", "n_nets", "decode", "views", "prior_px"):
            assert f2.get(key) == t2.get(key)


def test_a_model_that_cannot_be_saved_keeps_the_points(previewed: Path, tmp_path: Path,
                                                       monkeypatch, capsys) -> None:
    """Minutes of training are never thrown away by a failure at the very end: the points are
    written first, and a model that cannot be saved is a warning that says what it costs."""
    from lmk_studio.core.errors import LmkError
    from lmk_studio.engine import checkpoints

    lmk = _copy_project(previewed, tmp_path / "p")
    preset = tmp_path / "cpu-tiny.json"
    preset.write_text(json.dumps(shrink_stage1(_bundled("stage1", "cpu"))), "utf-8")

    def full_disk(obj, path) -> None:
        raise LmkError(f"{path}: cannot write the checkpoint (No space left on device)")

    monkeypatch.setattr(checkpoints, "save", full_disk)
    assert cli.main(["train", str(lmk), "--stage", "1", "--preset", str(preset),
                     "--device", "cpu"]) == 0
    written, preds = _stage_points(lmk, "stage1")
    assert written > 0 and len(preds) == 4
    out = capsys.readouterr().err
    assert "could not be saved" in out and "No space left" in out
