"""New patients after training: `predict --images` with a trained model predicts exactly the new
images, gives them start points first (on those images only), names every image it could not
predict, and never calls a run that wrote fewer points than it set out to a success."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_presets import TINY_S1_CLASSICAL as TINY_S1
from tiny_presets import TINY_S2

from lmk_studio import cli
from lmk_studio.commands.train_cmds import EXIT_INCOMPLETE
from lmk_studio.core.points import Source


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 4-image phantom project (12 landmarks) with the preview, a tiny Stage I and a tiny Stage II done."""
    from lmk_studio.core.phantoms import write_demo_project

    root = tmp_path_factory.mktemp("trained")
    lmk = write_demo_project(root / "demo", n=4, size=(96, 96), seed=0)
    (root / "s1.json").write_text(json.dumps(TINY_S1), "utf-8")
    (root / "s2.json").write_text(json.dumps(TINY_S2), "utf-8")
    assert cli.main(["predict", str(lmk), "--method", "classical"]) == 0
    assert cli.main(["train", str(lmk), "--stage", "1", "--preset", str(root / "s1.json"),
                     "--device", "cpu"]) == 0
    assert cli.main(["train", str(lmk), "--stage", "2", "--preset", str(root / "s2.json"),
                     "--device", "cpu"]) == 0
    return lmk


def _copy(src: Path, dst_dir: Path) -> Path:
    """A private copy with the trained models (images stay where the project names them)."""
    from lmk_studio.core.store import Project

    with Project.open(src) as proj:
        return proj.save_copy(dst_dir / src.name, models=True)


def _new_folder(where: Path, n: int = 2, tiny: bool = False) -> Path:
    from lmk_studio.core.phantoms import make_phantom_set

    where.mkdir(parents=True)
    for k, ph in enumerate(make_phantom_set(n + 1, size=(96, 96), seed=7)[1:]):
        cv2.imwrite(str(where / f"patient_{k}.png"), np.round(ph.image * 255).astype(np.uint8))
    if tiny:
        cv2.imwrite(str(where / "tiny.png"), np.full((8, 8), 128, np.uint8))
    return where


def _runs(lmk: Path):
    from lmk_studio.core.store import Project

    with Project.open(lmk) as proj:
        return proj, sorted(proj.runs(), key=lambda r: r.id)


@pytest.mark.parametrize("start,first", [("auto", "stage1-predict"), ("preview", "classical")])
def test_stage2_predicts_new_images_after_giving_them_start_points(
        trained, tmp_path, capsys, start, first) -> None:
    from lmk_studio.core.store import Project

    lmk = _copy(trained, tmp_path / "p")
    with Project.open(lmk) as proj:
        before = {r.id for r in proj.images()}
        last = max(r.id for r in proj.runs())
    folder = _new_folder(tmp_path / "new patients")
    code = cli.main(["predict", str(lmk), "--images", str(folder), "--start", start,
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    with Project.open(lmk) as proj:
        new = [r.id for r in proj.images() if r.id not in before]
        assert len(new) == 2
        runs = [r for r in sorted(proj.runs(), key=lambda r: r.id) if r.id > last]
        assert [r.kind for r in runs] == [first, "stage2-predict"]
        # the start step ran on the new images only, never on the training images
        assert set(proj.predictions(runs[0].id)) == set(new)
        s2 = runs[1]
        assert s2.metrics["points_written"] == s2.metrics["expected_points"] == 2 * 12
        for iid in new:
            pts = proj.points(iid)
            assert all(p.placed and p.source is Source.STAGE2 and p.run_id == s2.id for p in pts)
    assert "24 points written" in err


def test_predict_without_images_does_only_what_the_model_has_not_done(trained, tmp_path,
                                                                      capsys) -> None:
    lmk = _copy(trained, tmp_path / "p")
    assert cli.main(["predict", str(lmk), "--method", "stage1", "--device", "cpu"]) == 0
    assert cli.main(["predict", str(lmk), "--device", "cpu"]) == 0
    assert capsys.readouterr().err.count("nothing to predict") == 2
    _, runs = _runs(lmk)
    assert runs[-1].metrics["expected_points"] == 0
    # --all predicts everything again
    assert cli.main(["predict", str(lmk), "--all", "--device", "cpu"]) == 0
    _, runs = _runs(lmk)
    assert runs[-1].kind == "stage2-predict" and runs[-1].metrics["points_written"] == 3 * 12


def test_an_image_that_cannot_be_predicted_is_named_and_the_rest_predicted(trained, tmp_path,
                                                                           capsys) -> None:
    lmk = _copy(trained, tmp_path / "p")
    folder = _new_folder(tmp_path / "new", n=1, tiny=True)
    code = cli.main(["predict", str(lmk), "--images", str(folder), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == EXIT_INCOMPLETE, err
    assert "tiny.png" in err and "too small" in err and "only 12 of 24 points written" in err
    proj, runs = _runs(lmk)
    assert runs[-1].kind == "stage2-predict" and runs[-1].metrics["points_written"] == 12


def test_predict_stage2_on_an_untrained_project_says_what_to_do(tmp_path, capsys) -> None:
    from lmk_studio.core.phantoms import write_demo_project

    lmk = write_demo_project(tmp_path / "d", n=3, size=(96, 96), seed=0)
    assert cli.main(["predict", str(lmk)]) == 2
    assert "train Stage II first" in capsys.readouterr().err


def test_images_already_in_the_project_are_said_once_not_one_line_each(trained, tmp_path,
                                                                       capsys) -> None:
    lmk = _copy(trained, tmp_path / "p")
    folder = _new_folder(tmp_path / "new")
    assert cli.main(["predict", str(lmk), "--images", str(folder), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(lmk), "--images", str(folder), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "2 image(s) of" in err and "already in the project" in err
    assert "skipped" not in err and "0 new image(s) added" in err
