"""A shared project can never run code through its checkpoints.

A run row names checkpoint files; a crafted project could point them at a pickle whose loading
runs a payload. Every command that reads a checkpoint (`predict` with its default method,
`predict --method stage1`, `train --stage 2 --resume`) must refuse it by name without running it,
and must refuse any file outside the project's own model folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from tiny_presets import TINY_S1_LEARNED as TINY_S1
from tiny_presets import TINY_S2

from lmk_studio import cli
from lmk_studio.core.errors import LmkError
from lmk_studio.engine import checkpoints


class _Payload:
    """Pickles to a call of os.system: what an attacker would put in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture()
def project(tmp_path: Path):
    from lmk_studio.core.phantoms import write_demo_project

    lmk = write_demo_project(tmp_path / "demo", n=4, size=(96, 96), seed=0)
    assert cli.main(["predict", str(lmk), "--method", "classical"]) == 0
    return lmk


def _evil(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": _Payload(marker), "cfg": {}, "nets": []}, path)


def _fake_run(lmk: Path, kind: str, status: str, config: dict, ckpts: dict) -> int:
    from lmk_studio.core.store import Project

    with Project.open(lmk) as proj:
        rid = proj.start_run(kind, config)
        proj.finish_run(rid, status, checkpoints=ckpts)
        return rid


def test_default_predict_refuses_a_pickle_payload_as_the_stage2_model(project, tmp_path,
                                                                       capsys) -> None:
    marker = tmp_path / "PWNED"
    _evil(Path(str(project) + ".models") / "stage2_run9" / "model.pt", marker)
    _fake_run(project, "stage2", "finished", {}, {"model": "stage2_run9/model.pt"})
    assert cli.main(["predict", str(project)]) == 2
    assert not marker.exists(), "the checkpoint's payload ran"
    err = capsys.readouterr().err
    assert "model.pt" in err and "refused" in err


def test_predict_stage1_refuses_a_pickle_payload(project, tmp_path, capsys) -> None:
    from lmk_studio.engine.stage1 import load_preset

    marker = tmp_path / "PWNED"
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(TINY_S1), "utf-8")
    cfg = load_preset(str(preset)).to_dict()
    _evil(Path(str(project) + ".models") / "stage1_run9" / "coarse_model.pt", marker)
    _fake_run(project, "stage1", "finished", {"stage1": cfg},
              {"dir": "stage1_run9", "coarse": "stage1_run9/coarse_model.pt"})
    assert cli.main(["predict", str(project), "--method", "stage1"]) == 2
    assert not marker.exists(), "the checkpoint's payload ran"
    assert "coarse_model.pt" in capsys.readouterr().err


def test_resume_refuses_a_pickle_payload_as_the_trainer_checkpoint(project, tmp_path,
                                                                   capsys) -> None:
    marker = tmp_path / "PWNED"
    preset = tmp_path / "tiny2.json"
    preset.write_text(json.dumps(TINY_S2), "utf-8")
    _evil(Path(str(project) + ".models") / "stage2_run9" / "trainer.pt", marker)
    _fake_run(project, "stage2", "cancelled", {}, {"trainer": "stage2_run9/trainer.pt"})
    assert cli.main(["train", str(project), "--stage", "2", "--preset", str(preset),
                     "--resume", "--device", "cpu"]) == 2
    assert not marker.exists(), "the checkpoint's payload ran"
    assert "trainer.pt" in capsys.readouterr().err


@pytest.mark.parametrize("stored", ["../evil.pt", "/etc/passwd", "stage2_run9/../../evil.pt"])
def test_checkpoints_outside_the_model_folder_are_refused_by_name(project, tmp_path, capsys,
                                                                  stored) -> None:
    marker = tmp_path / "PWNED"
    _evil(project.parent / "evil.pt", marker)
    _fake_run(project, "stage2", "finished", {}, {"model": stored})
    assert cli.main(["predict", str(project)]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert stored in err and "outside" in err


def test_a_link_out_of_the_model_folder_is_refused(project, tmp_path) -> None:
    from lmk_studio.core.store import Project

    outside = tmp_path / "elsewhere.pt"
    torch.save({"x": torch.zeros(1)}, outside)
    link = Path(str(project) + ".models") / "stage2_run9" / "model.pt"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    with Project.open(project) as proj, pytest.raises(LmkError, match="outside"):
        checkpoints.resolve(proj, "stage2_run9/model.pt")


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path) -> None:
    good = tmp_path / "ok.pt"
    checkpoints.save({"w": torch.ones(3)}, good)
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good.read_bytes()[:40])
    assert torch.equal(checkpoints.load(good)["w"], torch.ones(3))
    with pytest.raises(LmkError, match="cut.pt"):
        checkpoints.load(bad)


def test_numpy_state_round_trips_as_plain_data(tmp_path) -> None:
    import numpy as np

    st = {"ema": np.arange(6.0).reshape(3, 2), "rng": np.random.get_state(),
          "n": np.int64(3), "hist": [{"val": np.float32(0.5)}]}
    checkpoints.save(st, tmp_path / "s.pt")
    back = checkpoints.load(tmp_path / "s.pt")
    assert np.allclose(np.asarray(back["ema"]), st["ema"]) and back["n"] == 3
    assert back["hist"][0]["val"] == pytest.approx(0.5)
    kind, key, *rest = back["rng"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))


def test_a_moved_project_still_finds_its_models(tmp_path) -> None:
    """Paths are stored relative to the model folder, and absolute ones written by earlier
    versions are re-rooted there, so moving the project with its .models folder keeps working."""
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.core.store import Project

    lmk = write_demo_project(tmp_path / "a" / "demo", n=4, size=(96, 96), seed=0)
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(TINY_S1), "utf-8")
    assert cli.main(["train", str(lmk), "--stage", "1", "--preset", str(preset),
                     "--device", "cpu"]) == 0
    with Project.open(lmk) as proj:
        run = [r for r in proj.runs() if r.kind == "stage1"][-1]
        assert all(not Path(v).is_absolute() for v in run.checkpoints.values())
        legacy = str(Path(str(lmk) + ".models").resolve() / run.checkpoints["coarse"])
    moved = tmp_path / "b"
    shutil.copytree(lmk.parent, moved)  # images are referenced by path; they stay put
    new = moved / lmk.name
    with Project.open(new) as proj:
        assert checkpoints.resolve(proj, legacy).is_file()    # an old absolute path, re-rooted
        assert checkpoints.resolve(proj, legacy).is_relative_to(moved.resolve())
    assert cli.main(["predict", str(new), "--method", "stage1", "--device", "cpu"]) == 0
