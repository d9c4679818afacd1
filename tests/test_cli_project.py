"""`lmk-studio new` / `lmk-studio info` through cli.main: output a person can act on, exit codes
0 (ok) and 2 (user error), and nothing created or overwritten on refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmk_studio.cli import main
from lmk_studio.core.points import Status

store = pytest.importorskip("lmk_studio.core.store")
pytest.importorskip("lmk_studio.core.images")


def _png(path: Path, value: int = 0) -> Path:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((20, 30), value, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


def _folder(root: Path, n: int = 3) -> Path:
    d = root / "images"
    for i in range(n):
        _png(d / f"im{i}.png", i)
    return d


def test_new_creates_the_project_and_lists_faulty_files(tmp_path: Path, capsys) -> None:
    root = tmp_path / "étude"
    d = _folder(root, 3)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5)  # truncated PNG
    lmk = root / "ceph.lmk"
    assert main(["new", str(lmk), "--images", str(d), "--template", "isbi2015-ceph-19"]) == 0
    out = capsys.readouterr().out
    assert f"Created {lmk}" in out
    assert "template: isbi2015-ceph-19 (19 landmarks)" in out
    assert "images added: 3, skipped: 1" in out
    assert f"skipped {d / 'broken.png'}: " in out
    with store.Project.open(lmk) as p:
        assert [r.name for r in p.images()] == ["im0.png", "im1.png", "im2.png"]
        assert len(p.template) == 19


def test_new_accepts_a_template_file_and_adds_the_suffix(tmp_path: Path, capsys) -> None:
    d = _folder(tmp_path, 1)
    tfile = tmp_path / "mine.json"
    tfile.write_text(json.dumps({"name": "mine", "landmarks": ["a", "b"]}))
    assert main(["new", str(tmp_path / "proj"), "--images", str(d), "--template",
                 str(tfile)]) == 0
    with store.Project.open(tmp_path / "proj.lmk") as p:
        assert p.template.names == ["a", "b"]


def test_new_refuses_an_existing_project_untouched(tmp_path: Path, capsys) -> None:
    d = _folder(tmp_path, 1)
    lmk = tmp_path / "p.lmk"
    assert main(["new", str(lmk), "--images", str(d), "--template", "chest-6"]) == 0
    before = lmk.read_bytes()
    capsys.readouterr()
    assert main(["new", str(lmk), "--images", str(d), "--template", "hand-37"]) == 2
    err = capsys.readouterr().err
    assert str(lmk) in err and "already exists" in err
    assert lmk.read_bytes() == before


@pytest.mark.parametrize("case", ["missing folder", "unknown template", "empty folder",
                                  "only broken files"])
def test_new_refuses_bad_input_and_creates_nothing(tmp_path: Path, capsys, case: str) -> None:
    d = tmp_path / "imgs"
    template = "chest-6"
    if case == "unknown template":
        _folder(tmp_path, 1)
        d, template = tmp_path / "images", "no-such-template"
    elif case == "empty folder":
        d.mkdir()
    elif case == "only broken files":
        d.mkdir()
        (d / "a.png").write_text("not an image")
    lmk = tmp_path / "out" / "p.lmk"
    assert main(["new", str(lmk), "--images", str(d), "--template", template]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmk-studio: error: ")
    assert (str(d) if case != "unknown template" else "no-such-template") in err
    assert not lmk.exists() and not Path(str(lmk) + "-wal").exists()


def test_info_summarises_points_runs_spacing_and_missing_files(tmp_path: Path, capsys) -> None:
    d = _folder(tmp_path, 3)
    lmk = tmp_path / "p.lmk"
    assert main(["new", str(lmk), "--images", str(d), "--template", "chest-6"]) == 0
    with store.Project.open(lmk) as p:
        a, b, c = (r.id for r in p.images())
        for i in range(6):
            p.set_point(a, i, 1.0 + i, 2.0, status=Status.EXEMPLAR)
        p.set_point(b, 0, 3.0, 4.0, status=Status.PREDICTED)
        p.mark_absent(b, 1)
        p.set_calibration((0.1, 0.1), image_id=c)
        rid = p.start_run("stage2", {"preset": "cpu"})
        p.finish_run(rid, "finished", metrics={"mre_px": 2.345678, "points_written": 5,
                                               "per_landmark": [1, 2]})
        p.start_run("stage1", {})
    (d / "im2.png").unlink()
    _png(d / "im1.png", 250)
    capsys.readouterr()
    assert main(["info", str(lmk)]) == 0
    out = capsys.readouterr().out
    assert "Template: chest-6 (6 landmarks)" in out
    assert "Images: 3 (1 missing, 1 changed)" in out
    assert f"Exemplar: im0.png (image id {a})" in out
    assert "Points: 18 slots (3 images x 6 landmarks)" in out
    lines = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()
             if ln.startswith("  ") and ln.split()[0] in {s.value for s in Status}}
    assert lines == {"unlabelled": "10", "exemplar": "6", "predicted": "1", "accepted": "0",
                     "corrected": "0", "absent": "1"}
    assert "none (figures in px): 2 image(s)" in out
    assert "calibration (user): 0.1 x 0.1: 1 image(s)" in out
    assert "Runs: 2" in out
    assert f"#{rid} stage2 finished" in out and "mre_px=2.346, points_written=5" in out
    assert "stage1 running (started 20" in out and " UTC)" in out
    assert f"Missing image files: 1\n  {(d / 'im2.png').resolve()}" in out
    assert f"Changed image files (content differs from when added): 1\n  " \
           f"{(d / 'im1.png').resolve()}" in out


def test_info_on_a_file_that_is_not_a_project(tmp_path: Path, capsys) -> None:
    f = tmp_path / "notes.lmk"
    f.write_text("hello")
    assert main(["info", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "not an SQLite database" in err
    assert f.read_text() == "hello"
    assert main(["info", str(tmp_path / "absent.lmk")]) == 2
    assert "not found" in capsys.readouterr().err


def test_new_and_info_with_a_non_utf8_file_name(tmp_path: Path, capsys) -> None:
    """Issue 13 item 3: `new` used to die with UnicodeEncodeError on such a name."""
    import os

    import cv2

    d = tmp_path / "imgs"
    d.mkdir()
    ok, buf = cv2.imencode(".png", np.zeros((20, 20), np.uint8))
    raw = os.path.join(os.fsencode(d), b"caf\xe9.png")
    try:
        with open(raw, "wb") as f:
            f.write(buf.tobytes())
    except OSError as e:
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    proj = tmp_path / "p.lmk"
    assert main(["new", str(proj), "--images", str(d), "--template", "isbi2015-ceph-19"]) == 0
    assert "images added: 1" in capsys.readouterr().out
    assert main(["info", str(proj)]) == 0
    out = capsys.readouterr().out
    assert "Images: 1" in out and "missing" not in out
