"""Project store: contract behaviour, refusal of foreign/corrupt/newer files without touching them,
schema migration, moved/changed images, write failures that lose nothing, two handles at once."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lmk_studio.core.errors import LmkError, ProjectError
from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.core.templates import LandmarkDef, Template

store = pytest.importorskip("lmk_studio.core.store")
pytest.importorskip("lmk_studio.core.images")  # add_images reads metadata through core.images
Project = store.Project


def _template(n: int = 4, name: str = "t4") -> Template:
    return Template(name, [LandmarkDef(f"L{i}", f"landmark {i}") for i in range(n)])


def _png(path: Path, h: int = 24, w: int = 32, value: int = 0) -> Path:
    import cv2

    img = np.full((h, w), value, np.uint8)
    img[h // 2, w // 2] = 255
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


def _folder(root: Path, n: int = 3) -> Path:
    d = root / "images"
    for i in range(n):
        _png(d / f"img{i:02d}.png", value=i * 10)
    return d


@pytest.fixture
def proj(tmp_path: Path):
    p = Project.create(tmp_path / "p.lmk", _template(), _folder(tmp_path))
    yield p
    p.close()


def _stored_paths(lmk: Path) -> list[str]:
    with sqlite3.connect(lmk) as c:
        return [r[0] for r in c.execute("SELECT path FROM images ORDER BY id")]


# --------------------------------------------------------------------------- create / open


def test_create_then_open_round_trip_with_relative_paths_and_unicode(tmp_path: Path) -> None:
    root = tmp_path / "études ü 測試"
    d = _folder(root, 3)
    with Project.create(root / "proj.lmk", _template(), d) as p:
        assert p.last_faults == []
        recs = p.images()
        assert [r.id for r in recs] == sorted(r.id for r in recs)
        assert [r.name for r in recs] == ["img00.png", "img01.png", "img02.png"]
        assert all((r.width, r.height) == (32, 24) for r in recs)
        assert all(r.path.is_absolute() and r.path.exists() for r in recs)
        assert not any(r.missing or r.changed for r in recs)
        assert all(r.spacing is None and r.spacing_source is None for r in recs)
        assert p.schema_version() == store.SCHEMA_VERSION
    assert _stored_paths(root / "proj.lmk") == [
        "images/img00.png", "images/img01.png", "images/img02.png"]
    with Project.open(root / "proj.lmk") as p:
        assert p.template == _template()
        assert len(p.template) == 4
        assert [r.name for r in p.images()] == ["img00.png", "img01.png", "img02.png"]
        assert p.integrity_check() == ["ok"]
        mode = p._c().execute("PRAGMA journal_mode").fetchone()[0]
        sync = p._c().execute("PRAGMA synchronous").fetchone()[0]
        assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_images_beside_the_project_folder_survive_moving_the_tree_or_the_file(
        tmp_path: Path) -> None:
    tree = tmp_path / "study"
    d = _folder(tree / "xrays", 1)
    lmk = tree / "projects" / "p.lmk"
    with Project.create(lmk, _template(), d) as p:
        assert p.images()[0].path == (d / "img00.png").resolve()
    assert _stored_paths(lmk) == ["../xrays/images/img00.png"]
    moved = tmp_path / "archive" / "study 2021"
    moved.parent.mkdir()
    shutil.move(str(tree), str(moved))  # the whole tree moves: the relative path finds it
    with Project.open(moved / "projects" / "p.lmk") as p:
        rec = p.images()[0]
        assert rec.path == (moved / "xrays" / "images" / "img00.png").resolve()
        assert not rec.missing
    alone = tmp_path / "p-copy.lmk"  # the file alone moves: the absolute path still works
    shutil.copy(moved / "projects" / "p.lmk", alone)
    shutil.move(str(moved), str(tree))
    with Project.open(alone) as p:
        rec = p.images()[0]
        assert rec.path == (d / "img00.png").resolve() and not rec.missing


def test_create_refuses_an_existing_file_and_leaves_it_byte_identical(tmp_path: Path) -> None:
    target = tmp_path / "p.lmk"
    target.write_bytes(b"the user's precious file")
    with pytest.raises(ProjectError, match="already exists") as ei:
        Project.create(target, _template())
    assert str(target) in str(ei.value)
    assert target.read_bytes() == b"the user's precious file"


def test_create_with_a_missing_images_folder_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(LmkError):
        Project.create(tmp_path / "p.lmk", _template(), tmp_path / "no-such-folder")
    assert list(tmp_path.iterdir()) == []


def test_faulty_and_duplicate_images_are_reported_and_skipped(tmp_path: Path) -> None:
    d = _folder(tmp_path, 2)
    (d / "fake.png").write_text("this is text, not a PNG")
    with Project.create(tmp_path / "p.lmk", _template(), d) as p:
        assert [r.name for r in p.images()] == ["img00.png", "img01.png"]
        assert [f[0].name for f in p.last_faults] == ["fake.png"]
        assert p.last_faults[0][1]
        added = p.add_images([d / "img00.png", _png(tmp_path / "new.png")])
        assert [r.name for r in added] == ["new.png"]
        assert p.last_faults == [(d / "img00.png", "already in the project (skipped)")]
        assert len(p.images()) == 3


# --------------------------------------------------------------------------- points


def test_points_are_len_template_and_edits_persist(tmp_path: Path, proj) -> None:
    a, b, c = (r.id for r in proj.images())
    pts = proj.points(a)
    assert pts == [LandmarkPoint(i, None, None) for i in range(4)]
    got = proj.set_point(a, 1, 10.25, 11.5, confidence=0.5)
    assert got == LandmarkPoint(1, 10.25, 11.5, Status.CORRECTED, Source.MANUAL, 0.5)
    proj.set_points([(b, LandmarkPoint(0, 1.0, 2.0, Status.PREDICTED, Source.STAGE2, 0.9, 3.5, 7)),
                     (b, LandmarkPoint(3, 4.0, 5.0, Status.PREDICTED, Source.STAGE2, 0.2, 9.0, 7))])
    proj.mark_absent(c, 2)
    proj.set_point(c, 0, 3.0, 3.0)
    proj.clear_point(c, 0)
    proj.set_points([(c, LandmarkPoint(3, 1.0, 1.0, Status.CORRECTED)),  # rows apply in order
                     (c, LandmarkPoint(3, None, None)),
                     (c, LandmarkPoint(1, 1.0, 1.0, Status.CORRECTED)),
                     (c, LandmarkPoint(1, 2.0, 2.0, Status.ACCEPTED))])
    accepted = proj.set_status(b, 0, Status.ACCEPTED)
    assert (accepted.x, accepted.y, accepted.source, accepted.run_id) == (1.0, 2.0,
                                                                           Source.STAGE2, 7)
    path = proj.path
    proj.close()
    with Project.open(path) as p:
        assert p.points(a)[1] == got
        assert p.points(b)[0] == LandmarkPoint(0, 1.0, 2.0, Status.ACCEPTED, Source.STAGE2, 0.9,
                                               3.5, 7)
        assert p.points(b)[3].expected_error_px == 9.0
        assert p.points(c)[2].status is Status.ABSENT and not p.points(c)[2].placed
        assert p.points(c)[0] == LandmarkPoint(0, None, None)
        assert p.points(c)[3] == LandmarkPoint(3, None, None)
        assert (p.points(c)[1].x, p.points(c)[1].status) == (2.0, Status.ACCEPTED)
        allp = p.all_points()
        assert set(allp) == {a, b, c} and all(len(v) == 4 for v in allp.values())
        assert allp[b] == p.points(b)
        counts = p.status_counts()
        assert counts[Status.ACCEPTED] == 2 and counts[Status.PREDICTED] == 1
        assert counts[Status.CORRECTED] == 1 and counts[Status.ABSENT] == 1
        assert sum(counts.values()) == 12


@pytest.mark.parametrize("bad", [
    dict(index=4, x=1.0, y=1.0),                 # index outside the template
    dict(index=0, x=float("nan"), y=1.0),        # NaN coordinate
    dict(index=0, x=None, y=1.0),                # a placed status needs both coordinates
    dict(index=0, x="left", y=1.0),              # not a number
    dict(index=0, x=1.0, y=1.0, status="bogus"),  # not a status
])
def test_invalid_point_is_refused_and_a_batch_writes_nothing(proj, bad) -> None:
    a = proj.images()[0].id
    with pytest.raises(ProjectError) as ei:
        proj.set_points([(a, LandmarkPoint(1, 5.0, 5.0)),
                         (a, LandmarkPoint(bad["index"], bad["x"], bad["y"],
                                           bad.get("status", Status.CORRECTED)))])
    assert str(proj.path) in str(ei.value)
    assert proj.points(a) == [LandmarkPoint(i, None, None) for i in range(4)]


def test_unknown_image_is_refused_and_the_batch_rolls_back(proj) -> None:
    a = proj.images()[0].id
    with pytest.raises(ProjectError, match="no image with id 999"):
        proj.set_points([(a, LandmarkPoint(0, 1.0, 1.0, Status.CORRECTED)),
                         (999, LandmarkPoint(0, 1.0, 1.0, Status.CORRECTED))])
    assert not proj.points(a)[0].placed


def test_exemplar_follows_exemplar_points_and_can_move(proj) -> None:
    a, b, _ = (r.id for r in proj.images())
    assert proj.exemplar_id is None
    proj.set_point(a, 0, 5.0, 6.0, status=Status.EXEMPLAR)
    assert proj.exemplar_id == a
    got = proj.set_point(a, 1, 7.0, 8.0)  # a manual edit on the exemplar is an exemplar label
    assert got.status is Status.EXEMPLAR and proj.points(a)[1] == got
    proj.set_point(b, 0, 1.0, 1.0, status=Status.ACCEPTED)
    proj.set_exemplar(b)
    assert proj.exemplar_id == b
    assert [p.status for p in proj.points(a)[:2]] == [Status.CORRECTED, Status.CORRECTED]
    assert proj.points(b)[0].status is Status.EXEMPLAR
    with pytest.raises(ProjectError, match="one exemplar"):
        proj.set_points([(a, LandmarkPoint(2, 1.0, 1.0, Status.EXEMPLAR)),
                         (b, LandmarkPoint(2, 1.0, 1.0, Status.EXEMPLAR))])
    assert proj.exemplar_id == b


def test_calibration_precedence_file_then_image_then_project(proj) -> None:
    a, b, c = (r.id for r in proj.images())
    proj.set_calibration((0.1, 0.1))
    proj.set_calibration((0.2, 0.25), image_id=b)
    # a file spacing (DICOM PixelSpacing) wins over any calibration
    proj._c().execute("UPDATE images SET spacing_row = 0.5, spacing_col = 0.5, "
                      "spacing_source = 'PixelSpacing' WHERE id = ?", (c,))
    got = {r.id: (r.spacing, r.spacing_source) for r in proj.images()}
    assert got[a] == ((0.1, 0.1), store.CALIBRATION_SOURCE)
    assert got[b] == ((0.2, 0.25), store.CALIBRATION_SOURCE)
    assert got[c] == ((0.5, 0.5), "PixelSpacing")
    assert proj.calibration() == (0.1, 0.1) and proj.calibration(b) == (0.2, 0.25)
    proj.set_calibration(None)
    assert proj.image(a).spacing is None
    for bad in [(0.0, 0.1), (-1.0, 1.0), (float("inf"), 1.0), (0.1,)]:
        with pytest.raises(ProjectError):
            proj.set_calibration(bad)


def test_runs_and_prediction_history(proj) -> None:
    a, b, _ = (r.id for r in proj.images())
    rid = proj.start_run("stage2", {"preset": "cpu", "lr": np.float32(0.5),
                                    "dir": Path("/x/y"), "ids": np.arange(3)})
    r = proj.run(rid)
    assert (r.kind, r.status, r.finished) == ("stage2", "running", None)
    assert r.config == {"preset": "cpu", "lr": 0.5, "dir": "/x/y", "ids": [0, 1, 2]}
    rows = [(a, LandmarkPoint(2, 3.0, 4.0, Status.PREDICTED, Source.STAGE2, 0.7, 2.0)),
            (b, LandmarkPoint(0, 5.0, 6.0, Status.PREDICTED, Source.STAGE2, 0.1, 8.0))]
    proj.record_predictions(rid, rows)
    proj.finish_run(rid, "finished", metrics={"mre_px": 2.5}, timings={"train_s": 12.0})
    proj.finish_run(rid, "finished", checkpoints={"model": "m.pt"})  # None keeps metrics
    r = proj.run(rid)
    assert r.status == "finished" and r.finished is not None
    assert (r.metrics, r.checkpoints, r.timings) == ({"mre_px": 2.5}, {"model": "m.pt"},
                                                     {"train_s": 12.0})
    preds = proj.predictions(rid)
    assert preds[a] == [LandmarkPoint(2, 3.0, 4.0, Status.PREDICTED, Source.STAGE2, 0.7, 2.0,
                                      rid)]
    assert preds[b][0].expected_error_px == 8.0
    assert proj.points(a)[2] == LandmarkPoint(2, None, None)  # history is not current points
    assert [x.id for x in proj.runs()] == [rid]
    with pytest.raises(ProjectError, match="run status"):
        proj.finish_run(rid, "done-ish")
    with pytest.raises(ProjectError, match="no run with id"):
        proj.run(rid + 1)


def test_meta_and_template_editing_rules(proj) -> None:
    proj.set_meta("gui.zoom", {"level": 2.5, "names": ["é", "ü"]})
    assert proj.get_meta("gui.zoom") == {"level": 2.5, "names": ["é", "ü"]}
    assert proj.get_meta("absent", 42) == 42
    with pytest.raises(ProjectError, match="reserved"):
        proj.set_meta("lmk:exemplar_id", 3)
    proj.set_template(_template(6, "six"))
    assert len(proj.template) == 6 and len(proj.points(proj.images()[0].id)) == 6
    proj.set_point(proj.images()[0].id, 5, 1.0, 1.0)
    with pytest.raises(ProjectError, match="cannot change the template"):
        proj.set_template(_template(3, "three"))
    with Project.open(proj.path) as again:
        assert again.template.name == "six"


# --------------------------------------------------------------------------- moved / changed


def test_moved_and_changed_images_are_noticed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "study"
    d = _folder(root, 3)
    with Project.create(root / "p.lmk", _template(), d) as p:
        p.set_point(p.images()[0].id, 0, 1.0, 2.0)
    # the whole folder moves: relative paths keep it working
    moved = tmp_path / "moved study"
    shutil.move(str(root), str(moved))
    with Project.open(moved / "p.lmk") as p:
        recs = p.images()
        assert all(r.path.parent == (moved / "images").resolve() for r in recs)
        assert not any(r.missing or r.changed for r in recs)
    # one file deleted, one rewritten with other pixels, one only touched
    (moved / "images" / "img00.png").unlink()
    _png(moved / "images" / "img01.png", value=200)
    t = moved / "images" / "img02.png"
    data = t.read_bytes()
    time.sleep(0.01)
    t.write_bytes(data)
    with Project.open(moved / "p.lmk") as p:
        state = {r.name: (r.missing, r.changed) for r in p.images()}
        assert state == {"img00.png": (True, False), "img01.png": (False, True),
                         "img02.png": (False, False)}
        assert p.points(p.images()[0].id)[0].x == 1.0  # nothing lost with the file


def test_touched_files_are_rehashed_once_and_then_cached(tmp_path: Path) -> None:
    d = _folder(tmp_path, 2)
    lmk = tmp_path / "p.lmk"
    Project.create(lmk, _template(), d).close()
    f = d / "img00.png"
    f.write_bytes(f.read_bytes())  # same content, new mtime
    with Project.open(lmk) as p:
        assert not p.images()[0].changed
    with sqlite3.connect(lmk) as c:
        (mtime,) = c.execute("SELECT mtime_ns FROM images WHERE name = 'img00.png'").fetchone()
    c.close()
    assert mtime == f.stat().st_mtime_ns


def test_relocate_finds_missing_images_by_name_and_content(tmp_path: Path) -> None:
    d = _folder(tmp_path / "old", 3)
    lmk = tmp_path / "proj" / "p.lmk"
    with Project.create(lmk, _template(), d) as p:
        p.set_point(1, 0, 4.0, 5.0)
    new = tmp_path / "new place"
    shutil.move(str(d), str(new))
    _png(new / "img02.png", value=123)  # same name, other content: not the same image
    with Project.open(lmk) as p:
        assert all(r.missing for r in p.images())
        assert p.relocate_images(new) == 2
        state = {r.name: (r.missing, r.path) for r in p.images()}
        assert state["img00.png"] == (False, (new / "img00.png").resolve())
        assert state["img02.png"][0] is True
        with pytest.raises(LmkError, match="folder not found"):
            p.relocate_images(tmp_path / "nowhere")
    with Project.open(lmk) as p:
        assert not p.image(1).missing and p.points(1)[0].x == 4.0


def test_remove_images_drops_their_points_and_history_only(proj) -> None:
    a, b, c = (r.id for r in proj.images())
    proj.set_point(a, 0, 1.0, 1.0, status=Status.EXEMPLAR)
    proj.set_point(b, 0, 2.0, 2.0)
    rid = proj.start_run("classical", {})
    proj.record_predictions(rid, [(a, LandmarkPoint(1, 1.0, 1.0, Status.PREDICTED)),
                                  (b, LandmarkPoint(1, 1.0, 1.0, Status.PREDICTED))])
    with pytest.raises(ProjectError, match="no image with id 999"):
        proj.remove_images([c, 999])
    assert len(proj.images()) == 3
    proj.remove_images([a, c])
    assert [r.id for r in proj.images()] == [b]
    assert proj.exemplar_id is None
    assert list(proj.predictions(rid)) == [b]
    assert proj.points(b)[0].x == 2.0
    assert set(proj.all_points()) == {b}
    with pytest.raises(ProjectError, match="no image with id"):
        proj.points(a)


def test_accept_file_change_stores_the_new_version(tmp_path: Path) -> None:
    d = _folder(tmp_path, 1)
    with Project.create(tmp_path / "p.lmk", _template(), d) as p:
        p.set_point(1, 0, 3.0, 3.0)
        _png(d / "img00.png", h=40, w=50, value=99)
        p.refresh_files()
        assert p.image(1).changed
        rec = p.accept_file_change(1)
        assert not rec.changed and (rec.width, rec.height) == (50, 40)
        assert p.points(1)[0].x == 3.0
    with Project.open(tmp_path / "p.lmk") as p:
        assert not p.image(1).changed
        (d / "img00.png").unlink()
        p.refresh_files()
        with pytest.raises(ProjectError, match="missing"):
            p.accept_file_change(1)


def test_a_failed_create_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(con, v):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_migrate", full)
    lmk = tmp_path / "p.lmk"
    with pytest.raises(ProjectError, match="disk is full") as ei:
        Project.create(lmk, _template(), _folder(tmp_path, 1))
    assert str(lmk) in str(ei.value)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["images"]


# --------------------------------------------------------------------------- refused files


def _assert_refused(path: Path, match: str) -> None:
    before = path.read_bytes()
    siblings = sorted(x.name for x in path.parent.iterdir())
    with pytest.raises(ProjectError, match=match) as ei:
        Project.open(path)
    assert str(path) in str(ei.value)
    assert path.read_bytes() == before
    assert sorted(x.name for x in path.parent.iterdir()) == siblings


def test_refuses_missing_empty_and_non_sqlite_files(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="not found"):
        Project.open(tmp_path / "nope.lmk")
    (tmp_path / "empty.lmk").write_bytes(b"")
    _assert_refused(tmp_path / "empty.lmk", "empty")
    (tmp_path / "text.lmk").write_text("name,x,y\nS,1,2\n")
    _assert_refused(tmp_path / "text.lmk", "not an SQLite database")
    _png(tmp_path / "image.lmk")
    _assert_refused(tmp_path / "image.lmk", "not an SQLite database")


def test_refuses_an_empty_database_from_an_interrupted_creation(tmp_path: Path) -> None:
    lmk = tmp_path / "p.lmk"
    c = sqlite3.connect(lmk)  # what a creation killed before its first commit leaves behind
    c.execute("PRAGMA journal_mode = WAL")
    c.close()
    assert lmk.stat().st_size > 0
    _assert_refused(lmk, "empty database")


def test_refuses_another_programs_sqlite_database(tmp_path: Path) -> None:
    other = tmp_path / "other.lmk"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE contacts (name TEXT)")
        c.execute("INSERT INTO contacts VALUES ('x')")
    c.close()
    _assert_refused(other, "not an lmk_studio project")


def test_refuses_a_newer_schema_untouched(tmp_path: Path) -> None:
    lmk = tmp_path / "p.lmk"
    Project.create(lmk, _template()).close()
    with sqlite3.connect(lmk) as c:
        c.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    c.close()
    _assert_refused(lmk, "newer lmk_studio")


def test_refuses_a_corrupt_file_untouched(tmp_path: Path) -> None:
    lmk = tmp_path / "p.lmk"
    with Project.create(lmk, _template(), _folder(tmp_path, 3)) as p:
        p.set_points([(r.id, LandmarkPoint(i, 1.0, 1.0, Status.CORRECTED))
                      for r in p.images() for i in range(4)])
    data = bytearray(lmk.read_bytes())
    page = 4096
    assert len(data) >= 3 * page
    data[page: 3 * page] = bytes([0xA5]) * (2 * page)  # b-tree pages 2-3 overwritten
    lmk.write_bytes(bytes(data))
    _assert_refused(lmk, "corrupt")


def test_refuses_a_truncated_file_untouched(tmp_path: Path) -> None:
    lmk = tmp_path / "p.lmk"
    with Project.create(lmk, _template(), _folder(tmp_path, 3)):
        pass
    data = lmk.read_bytes()
    lmk.write_bytes(data[: len(data) // 2])
    _assert_refused(lmk, "corrupt")


# --------------------------------------------------------------------------- migration


def _build_v1_by_hand(path: Path, image: Path) -> None:
    """A schema v1 file as the first layout wrote it (no expected error, no predictions)."""
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA application_id = {store.APPLICATION_ID}")
    for stmt in store.MIGRATIONS[1]:
        c.execute(stmt)
    c.execute("PRAGMA user_version = 1")
    c.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("lmk:format", json.dumps(store.FORMAT_MARK)), ("lmk:exemplar_id", "1"),
        ("gui.zoom", "3")])
    c.execute("INSERT INTO template VALUES (1, ?)", (json.dumps(_template().to_dict()),))
    from lmk_studio.core.images import quick_hash

    st = image.stat()
    c.execute("INSERT INTO images (id, path, abs_path, name, width, height, hash, size, "
              "mtime_ns, added) VALUES (1, ?, ?, ?, 32, 24, ?, ?, ?, 'then')",
              ("images/img00.png", str(image.resolve()), image.name, quick_hash(image),
               st.st_size, st.st_mtime_ns))
    c.execute("INSERT INTO points VALUES (1, 2, 4.5, 5.5, 'exemplar', 'manual', NULL, NULL, "
              "'then')")
    c.execute("INSERT INTO runs (kind, status, config, started) VALUES ('stage1', 'finished', "
              "'{\"preset\": \"cpu\"}', 'then')")
    c.commit()
    c.close()


def test_a_v1_file_is_backed_up_and_upgraded_with_its_data(tmp_path: Path) -> None:
    d = _folder(tmp_path, 1)
    lmk = tmp_path / "old.lmk"
    _build_v1_by_hand(lmk, d / "img00.png")
    with Project.open(lmk) as p:
        assert p.schema_version() == store.SCHEMA_VERSION
        assert p.exemplar_id == 1
        assert p.points(1)[2] == LandmarkPoint(2, 4.5, 5.5, Status.EXEMPLAR, Source.MANUAL)
        assert p.runs()[0].config == {"preset": "cpu"}
        assert p.get_meta("gui.zoom") == 3
        assert not p.images()[0].missing and not p.images()[0].changed
        p.set_point(1, 0, 1.0, 1.0, expected_error_px=2.0)  # v2 column usable
        rid = p.start_run("stage2", {})
        p.record_predictions(rid, [(1, LandmarkPoint(0, 1.0, 1.0, Status.PREDICTED))])
        assert p.integrity_check() == ["ok"]
    backup = tmp_path / "old.lmk.schema-v1.bak"
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 1
        assert c.execute("SELECT x, y FROM points").fetchall() == [(4.5, 5.5)]
    c.close()
    with Project.open(lmk) as p:  # second open: already current, no new backup needed
        assert p.points(1)[0].expected_error_px == 2.0


# --------------------------------------------------------------------------- write failures


def test_full_disk_is_a_clear_error_and_loses_nothing(proj) -> None:
    a = proj.images()[0].id
    proj.set_point(a, 0, 1.0, 2.0)
    con = proj._c()
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.execute(f"PRAGMA max_page_count = {pages}")  # real SQLITE_FULL on the next growth
    big = [(r.id, LandmarkPoint(i, float(k), 1.0, Status.PREDICTED, Source.STAGE1))
           for k, r in enumerate(proj.images()) for i in range(4)]
    with pytest.raises(ProjectError) as ei:
        proj.start_run("stage1", {"pad": "x" * 50_000})
    msg = str(ei.value)
    assert str(proj.path) in msg and "disk is full" in msg and "rolled back" in msg
    con.execute("PRAGMA max_page_count = 1073741823")
    proj.set_points(big)  # the project keeps working after space is freed
    assert proj.runs() == []
    assert proj.points(a)[0].x == 0.0 and proj.integrity_check() == ["ok"]


class _ReadOnlyConnection:
    """A connection whose writes fail as on a read-only medium (tests run as root, so chmod
    would not stop the writes)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def _check(self, sql: str) -> None:
        if sql.split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            raise sqlite3.OperationalError("attempt to write a readonly database")

    def execute(self, sql: str, *args):
        self._check(sql)
        return self._con.execute(sql, *args)

    def executemany(self, sql: str, *args):
        self._check(sql)
        return self._con.executemany(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._con, name)


def test_read_only_location_is_a_clear_error_and_loses_nothing(proj) -> None:
    a = proj.images()[0].id
    proj.set_point(a, 0, 1.0, 2.0)
    real = proj._con
    proj._con = _ReadOnlyConnection(real)
    try:
        with pytest.raises(ProjectError) as ei:
            proj.set_point(a, 0, 9.0, 9.0)
        assert "read-only" in str(ei.value) and str(proj.path) in str(ei.value)
        assert not real.in_transaction
        assert proj.points(a)[0].x == 1.0
    finally:
        proj._con = real
    proj.set_point(a, 0, 3.0, 3.0)
    assert proj.points(a)[0].x == 3.0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_project_in_a_read_only_folder_opens_for_reading_and_refuses_edits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lmk = tmp_path / "ro" / "p.lmk"
    with Project.create(lmk, _template(), _folder(tmp_path / "ro", 1)) as p:
        p.set_point(1, 0, 1.0, 2.0)
    before = lmk.read_bytes()
    os.chmod(lmk, 0o444)
    os.chmod(lmk.parent, 0o555)
    if os.geteuid() == 0:  # root writes anyway: report the place as read-only, as for a user
        monkeypatch.setattr(store.os, "access", lambda path, mode: mode != os.W_OK)
    try:
        with Project.open(lmk) as p:
            assert p.read_only
            assert p.points(1)[0].x == 1.0 and p.template == _template()
            with pytest.raises(ProjectError) as ei:
                p.set_point(1, 1, 3.0, 3.0)
            msg = str(ei.value)
            assert msg.startswith(f"{lmk}: could not save landmark 1 of image 1") and \
                "read-only" in msg
            with pytest.raises(sqlite3.OperationalError, match="readonly"):  # truly read-only
                p._c().execute("DELETE FROM points")
        assert lmk.read_bytes() == before
        assert sorted(os.listdir(lmk.parent)) == ["images", "p.lmk"]
    finally:
        os.chmod(lmk.parent, 0o755)
        os.chmod(lmk, 0o644)


def test_save_copy_is_a_complete_project_and_never_overwrites(proj, tmp_path: Path) -> None:
    a = proj.images()[0].id
    proj.set_point(a, 0, 1.5, 2.5, status=Status.EXEMPLAR)
    rid = proj.start_run("stage1", {"k": 1})
    copy = proj.save_copy(tmp_path / "copies" / "backup")
    assert copy == tmp_path / "copies" / "backup.lmk"
    proj.set_point(a, 0, 9.0, 9.0)  # later edits stay in the original only
    with Project.open(copy) as c:
        assert c.points(a)[0].x == 1.5 and c.exemplar_id == a
        assert c.run(rid).config == {"k": 1}
        assert [r.path for r in c.images()] == [r.path for r in proj.images()]
        assert not any(r.missing for r in c.images())
    before = copy.read_bytes()
    with pytest.raises(ProjectError, match="already exists"):
        proj.save_copy(copy)
    assert copy.read_bytes() == before
    assert sorted(x.name for x in copy.parent.iterdir()) == ["backup.lmk"]


# --------------------------------------------------------------------------- two handles


def test_two_handles_see_each_others_commits_and_wait_for_the_lock(proj) -> None:
    a, b, _ = (r.id for r in proj.images())
    other = Project.open(proj.path)
    try:
        proj.set_point(a, 0, 1.0, 1.0)
        assert other.points(a)[0].x == 1.0
        rid = other.start_run("stage2", {})
        assert [r.id for r in proj.runs()] == [rid]
        # proj holds the write lock for 0.3 s; other's edit waits (busy_timeout), then lands
        con = proj._c()
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE points SET x = 5.0 WHERE image_id = ? AND idx = 0", (a,))
        t0 = time.perf_counter()
        timer = threading.Timer(0.3, lambda: con.execute("COMMIT"))
        timer.start()
        other.set_point(b, 1, 2.0, 2.0)
        waited = time.perf_counter() - t0
        timer.join()
        assert waited >= 0.25
        assert proj.points(b)[1].x == 2.0 and other.points(a)[0].x == 5.0
    finally:
        other.close()


def test_closed_project_says_so(proj) -> None:
    proj.close()
    with pytest.raises(ProjectError, match="closed"):
        proj.images()
    proj.close()  # idempotent


def test_keep_human_write_skips_points_a_user_set_after_the_job_read_them(
        proj: Project, tmp_path: Path) -> None:
    """An engine job reads, predicts, then writes; a click landing in between must survive."""
    ids = [r.id for r in proj.images()]
    ex, a, b = ids[0], ids[1], ids[2]
    proj.set_point(ex, 0, 1.0, 1.0, status=Status.EXEMPLAR)
    job_view = {iid: proj.points(iid) for iid in ids}          # the job reads ...
    other = Project.open(proj.path)                             # ... the GUI edits meanwhile
    other.set_point(a, 0, 5.0, 6.0, status=Status.CORRECTED, source=Source.MANUAL)
    other.mark_absent(a, 1)
    other.close()
    assert all(not p.placed for p in job_view[a])
    pred = [(iid, LandmarkPoint(j, 9.0, 9.0, Status.PREDICTED, Source.STAGE2, 0.5))
            for iid in (ex, a, b) for j in range(2)]
    written = proj.set_points(pred, keep_human=True)
    assert written == 2                                          # only b:0 and b:1
    pa = proj.points(a)
    assert (pa[0].x, pa[0].status) == (5.0, Status.CORRECTED)
    assert pa[1].status is Status.ABSENT
    assert proj.points(b)[0].status is Status.PREDICTED
    assert proj.points(ex)[0].status is Status.EXEMPLAR and proj.points(ex)[1].x is None
    assert proj.set_points(pred) == len(pred)                   # default: the caller decides


# ---- file names that are not UTF-8 (issue 13, item 3) ----------------------------------------
def _non_utf8_png(folder: Path) -> Path:
    """A PNG whose name holds the Latin-1 byte 0xE9 (as older systems and shares write it)."""
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    try:
        with open(raw, "wb"):
            pass
    except OSError as e:  # e.g. macOS file systems refuse such names
        pytest.skip(f"this file system refuses non-UTF-8 names ({e})")
    return _png(Path(os.fsdecode(raw)))


def test_non_utf8_file_name_is_stored_found_and_shown_escaped(tmp_path: Path) -> None:
    d = _folder(tmp_path, 1)
    odd = _non_utf8_png(d)
    with Project.create(tmp_path / "p.lmk", _template(), d) as p:
        assert p.last_faults == []
        recs = {r.name: r for r in p.images()}
    assert sorted(recs) == ["caf\\xe9.png", "img00.png"]  # printable, byte shown as \xe9
    with Project.open(tmp_path / "p.lmk") as p:
        rec = next(r for r in p.images() if r.name == "caf\\xe9.png")
        assert rec.path == odd and not rec.missing and not rec.changed
        from lmk_studio.core.images import load_image

        assert load_image(rec.path).shape == (24, 32)


def test_non_utf8_file_added_to_an_existing_project_keeps_the_others(tmp_path: Path) -> None:
    """`predict --images` adds a folder to a project: one odd name must not roll back the rest."""
    with Project.create(tmp_path / "p.lmk", _template(), _folder(tmp_path, 1)) as p:
        new = tmp_path / "more"
        _png(new / "a.png")
        _non_utf8_png(new)
        from lmk_studio.core.images import list_images

        added = p.add_images(list_images(new))
        assert sorted(r.name for r in added) == ["a.png", "caf\\xe9.png"]
        assert len(p.images()) == 3


# ---- crafted values in a project file (issue 13, item 6) -------------------------------------
_CRAFTED = {
    "point status": ("UPDATE points SET status = 'bogus'", "'bogus'"),
    "point source": ("UPDATE points SET source = 'alien'", "'alien'"),
    "point x text": ("UPDATE points SET x = 'x'", "'x'"),
    "point index text": ("UPDATE points SET idx = 'one' WHERE idx = 0", "'one'"),
    "point confidence": ("UPDATE points SET confidence = 'hi'", "'hi'"),
    "point run id": ("UPDATE points SET run_id = 'r'", "'r'"),
    "calibration text": ("INSERT OR REPLACE INTO meta VALUES ('lmk:calibration', '\"x\"')",
                         "'x'"),
    "calibration not json": ("INSERT OR REPLACE INTO meta VALUES ('lmk:calibration', 'oops')",
                             "'oops'"),
    "exemplar id": ("INSERT OR REPLACE INTO meta VALUES ('lmk:exemplar_id', '\"abc\"')", "'abc'"),
    "image width": ("UPDATE images SET width = 'wide'", "'wide'"),
    "image spacing": ("UPDATE images SET spacing_row = -1, spacing_col = 1", "-1"),
    "image name": ("UPDATE images SET name = 5", "5"),
    "image path": ("UPDATE images SET path = 7, abs_path = 8 WHERE id = 1", "7"),
    "run status": ("UPDATE runs SET status = 'bogus'", "'bogus'"),
    "run metrics": ("UPDATE runs SET metrics = '[1'", "'[1'"),
    "run config": ("UPDATE runs SET config = '5'", "'5'"),
    "run started": ("UPDATE runs SET started = 5", "5"),
    "template": ("UPDATE template SET json = '{\"name\": 5}'", None),
    "coordinates overflow": ("UPDATE points SET x = CASE idx WHEN 0 THEN 1e308 ELSE -1e308 END",
                             None),
}


@pytest.mark.parametrize("case", sorted(_CRAFTED))
def test_crafted_project_value_is_reported_by_name(tmp_path: Path, capsys, case: str) -> None:
    """`info` and `export` either work or say which file, table/row and value is wrong."""
    from lmk_studio.cli import main

    path = tmp_path / "p.lmk"
    with Project.create(path, _template(), _folder(tmp_path, 2)) as p:
        rec = p.images()[0]
        run = p.start_run("classical", {})
        p.finish_run(run, "finished", metrics={"points_written": 2})
        p.set_points([(rec.id, LandmarkPoint(k, 3.0, 4.0, Status.PREDICTED, Source.CLASSICAL,
                                             0.5, None, run)) for k in range(2)])
    sql, shown = _CRAFTED[case]
    with sqlite3.connect(path) as c:
        c.execute(sql)
    c.close()
    out = tmp_path / "out"
    out.mkdir()
    for argv in (["info", str(path)],
                 ["export", str(path), "--csv", str(out / "a.csv"), "--json",
                  str(out / "a.json"), "--coco", str(out / "c.json")]):
        rc = main(argv)  # anything but an LmkError would propagate here as a traceback
        err = capsys.readouterr().err
        assert rc in (0, 2)
        if rc == 2:
            assert str(path) in err or "cannot export" in err, err
            if shown is not None:
                assert shown in err, err
            assert "Traceback" not in err


# ---- runs left "running" by a killed process (issue 13, item 8) ------------------------------
_RUNNER = """
import sys, time
from lmk_studio.core.store import Project
p = Project.open(sys.argv[1])
rid = p.start_run("stage1", {"preset": "quick"})
print(rid, flush=True)
time.sleep(120)
"""


def _start_runner(path: Path):
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line.strip().isdigit(), line
    return proc, int(line)


def test_run_of_a_killed_process_is_marked_interrupted_on_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "p.lmk"
    Project.create(path, _template(), _folder(tmp_path, 1)).close()
    proc, rid = _start_runner(path)
    try:
        with Project.open(path) as p:  # the owner is alive: its run is left alone
            assert p.run(rid).status == "running"
    finally:
        proc.kill()
        proc.wait()
    with Project.open(path) as p:
        r = p.run(rid)
        assert r.status == "failed" and r.finished
        assert r.metrics["interrupted"] is True
        assert f"process {proc.pid}" in r.metrics["error"]
        with p._read() as con:  # and the owner record is gone with it
            assert con.execute("SELECT count(*) FROM meta WHERE key LIKE 'lmk:run_owner:%'"
                               ).fetchone()[0] == 0


def test_runs_without_a_known_dead_owner_are_left_running(tmp_path: Path) -> None:
    path = tmp_path / "p.lmk"
    with Project.create(path, _template(), _folder(tmp_path, 1)) as p:
        mine = p.start_run("stage1", {})
        old = p.start_run("stage2", {})
        elsewhere = p.start_run("classical", {})
    with sqlite3.connect(path) as c:  # no owner (an older version) / another machine's owner
        c.execute("DELETE FROM meta WHERE key = ?", (f"lmk:run_owner:{old}",))
        c.execute("UPDATE meta SET value = json_set(value, '$.host', 'elsewhere', '$.pid', 1) "
                  "WHERE key = ?", (f"lmk:run_owner:{elsewhere}",))
    c.close()
    with Project.open(path) as p:
        assert [p.run(r).status for r in (mine, old, elsewhere)] == ["running"] * 3
        p.finish_run(mine, "finished")
        assert p.close_orphan_runs() == []


def test_info_shows_an_interrupted_cli_run(tmp_path: Path, capsys) -> None:
    from lmk_studio.cli import main

    path = tmp_path / "p.lmk"
    Project.create(path, _template(), _folder(tmp_path, 1)).close()
    proc, rid = _start_runner(path)
    proc.kill()
    proc.wait()
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"#{rid} stage1 failed" in out and "interrupted" in out


def test_a_dead_job_child_is_left_to_its_live_parent() -> None:
    """engine.process closes the runs of a child that dies, with how it died; the store only
    steps in when that parent is gone too."""
    import socket

    gone = {"pid": 999_999, "host": socket.gethostname(), "created": 1.0}  # beyond pid_max
    assert store._owner_gone(dict(gone, parent={"pid": os.getpid(), "created": None})) is None
    assert "999999" in store._owner_gone(dict(gone, parent={"pid": 999_998, "created": 1.0}))
    assert "999999" in store._owner_gone(gone)
    assert store._owner_gone(store._this_process()) is None  # this process is alive


def test_predictions_of_some_images_read_only_those(tmp_path) -> None:
    """A new patient's start points must not need a whole folder's history."""
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.core.points import LandmarkPoint, Source, Status
    from lmk_studio.core.store import Project

    lmk = write_demo_project(tmp_path / "d", n=4, size=(64, 64), seed=0)
    with Project.open(lmk) as p:
        ids = [r.id for r in p.images()]
        rid = p.start_run("classical", {})
        p.record_predictions(rid, [(i, LandmarkPoint(0, 1.0 * i, 2.0, Status.PREDICTED,
                                                     Source.CLASSICAL)) for i in ids])
        some = p.predictions(rid, [ids[1], ids[3], 999])
        assert set(some) == {ids[1], ids[3]} and some[ids[1]][0].x == 1.0 * ids[1]
        assert p.predictions(rid) == {**p.predictions(rid, ids)}
        assert p.predictions(rid, []) == {}


def test_save_copy_with_models_copies_the_model_folder_and_never_overwrites(tmp_path) -> None:
    from lmk_studio.core.errors import ProjectError
    from lmk_studio.core.phantoms import write_demo_project
    from lmk_studio.core.store import Project

    lmk = write_demo_project(tmp_path / "d", n=3, size=(64, 64), seed=0)
    models = Path(str(lmk) + ".models") / "stage2_run1"
    models.mkdir(parents=True)
    (models / "model.pt").write_bytes(b"weights")
    with Project.open(lmk) as p:
        copy = p.save_copy(tmp_path / "c" / "copy", models=True)
        assert (Path(str(copy) + ".models") / "stage2_run1" / "model.pt").read_bytes() == b"weights"
        (tmp_path / "c" / "other.lmk.models").mkdir()
        with pytest.raises(ProjectError, match="other.lmk.models"):
            p.save_copy(tmp_path / "c" / "other", models=True)
        assert not (tmp_path / "c" / "other.lmk").exists()
