"""One image no engine can use (8 x 8 pixels, which `new` accepts) never stops a folder: every job
(preview, Stage I, Stage II, and their predictions) names it, skips it and predicts the rest."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tiny_presets import TINY_S1_CLASSICAL as TINY_S1
from tiny_presets import TINY_S2

from lmk_studio import cli


def test_every_job_names_and_skips_a_tiny_image(tmp_path: Path, capsys) -> None:
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.core.store import Project

    lmk = write_demo_project(tmp_path / "demo", n=4, size=(96, 96), seed=0)
    tiny = tmp_path / "demo" / "images" / "zz_tiny.png"
    cv2.imwrite(str(tiny), np.full((8, 8), 90, np.uint8))
    with Project.open(lmk) as proj:
        assert proj.add_images([tiny])
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"stage1": TINY_S1, "stage2": TINY_S2}), "utf-8")
    assert cli.main(["train", str(lmk), "--stage", "all", "--preset", str(both),
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    with Project.open(lmk) as proj:
        runs = sorted(proj.runs(), key=lambda r: r.id)
        assert [(r.kind, r.status) for r in runs] == [
            ("classical", "finished"), ("stage1", "finished"), ("stage2", "finished")]
        for r in runs:
            assert any("zz_tiny.png" in f for f in r.metrics["faults"]), (r.kind, r.metrics)
            assert r.metrics["points_written"] == 3 * len(proj.template), r.kind
    assert "zz_tiny.png" in err
    # predicting it by name says why, and exits non-zero: nothing is silently "finished"
    assert cli.main(["predict", str(lmk), "--all", "--device", "cpu"]) == 3
    assert "zz_tiny.png" in capsys.readouterr().err
