"""Exemplar suggestion (engine.exemplar + `lmk-studio suggest-exemplar`) on phantoms: the ranking
is deterministic, a flipped image ranks last, corrupt and blank files are skipped by name, the
command prints the table, writes JSON and exits 0."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lmk_studio.cli import main
from lmk_studio.core.phantoms import make_phantom_set, write_demo_project
from lmk_studio.engine.exemplar import RankingCancelled, rank_exemplars


def _png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 phantoms, a left-right flipped copy of one (the outlier), a corrupt PNG, a blank PNG."""
    d = tmp_path_factory.mktemp("exemplar") / "images"
    d.mkdir()
    ph = make_phantom_set(8, size=(200, 160), seed=3)
    for k, p in enumerate(ph):
        _png(d / f"ph_{k:02d}.png", p.image)
    _png(d / "ph_50_flipped.png", ph[4].image[:, ::-1])
    (d / "ph_60_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 20)
    _png(d / "ph_70_blank.png", np.full((200, 160), 0.5, np.float32))
    return d


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_flipped_ranks_last_and_bad_files_are_skipped_by_name(folder: Path) -> None:
    r = rank_exemplars(_paths(folder))
    names = [c.name for c in r.candidates]
    assert len(names) == 9 and names[-1] == "ph_50_flipped.png", names
    assert r.candidates[-1].score < min(c.score for c in r.candidates[:-1])
    skipped = {p.name: why for p, why in r.skipped}
    assert set(skipped) == {"ph_60_broken.png", "ph_70_blank.png"}
    assert "blank" in skipped["ph_70_blank.png"]
    assert [c.rank for c in r.candidates] == list(range(1, 10))
    assert r.best is not None and r.best.why.startswith("most typical")
    assert r.seconds < 30


def test_ranking_is_deterministic_and_order_free(folder: Path) -> None:
    a = rank_exemplars(_paths(folder))
    again = rank_exemplars(_paths(folder))
    assert [(c.name, c.score) for c in a.candidates] == [(c.name, c.score) for c in again.candidates]
    # the folder's order changes only the summation order (last-bit float differences)
    b = rank_exemplars(list(reversed(_paths(folder))))
    assert [c.name for c in a.candidates] == [c.name for c in b.candidates]
    assert [c.score for c in b.candidates] == pytest.approx([c.score for c in a.candidates])


def test_ids_progress_and_cancel(folder: Path) -> None:
    paths = _paths(folder)
    seen: list[tuple[int, int]] = []
    r = rank_exemplars(paths, ids=list(range(100, 100 + len(paths))),
                       progress=lambda k, n: seen.append((k, n)))
    assert seen[-1] == (len(paths), len(paths))
    by_name = {p.name: 100 + k for k, p in enumerate(paths)}
    assert all(c.image_id == by_name[c.name] for c in r.candidates)
    with pytest.raises(RankingCancelled):
        rank_exemplars(paths, cancel=lambda: True)


def test_one_or_no_readable_image(tmp_path: Path) -> None:
    _png(tmp_path / "only.png", make_phantom_set(1, size=(64, 64))[0].image)
    r = rank_exemplars([tmp_path / "only.png", tmp_path / "gone.png"])
    assert [c.name for c in r.candidates] == ["only.png"]
    assert [p.name for p, _ in r.skipped] == ["gone.png"]
    assert rank_exemplars([]).candidates == []


def test_cli_prints_the_table_and_writes_json(tmp_path: Path, folder: Path, capsys) -> None:
    out = tmp_path / "rank.json"
    assert main(["suggest-exemplar", str(folder), "--top", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rank  image" in text and "Suggested exemplar: " in text
    assert "ph_60_broken.png:" in text and "ph_70_blank.png: blank" in text
    assert "last: ph_50_flipped.png" in text
    data = json.loads(out.read_text())
    assert len(data["ranking"]) == 9 and data["ranking"][-1]["name"] == "ph_50_flipped.png"
    assert {s["path"].rsplit("/", 1)[-1] for s in data["skipped"]} == {"ph_60_broken.png",
                                                                       "ph_70_blank.png"}


def test_cli_on_a_project_names_the_current_exemplar(tmp_path: Path, capsys) -> None:
    lmk = write_demo_project(tmp_path / "demo", n=6, size=(160, 128))
    assert main(["suggest-exemplar", str(lmk), "--top", "0"]) == 0
    text = capsys.readouterr().out
    assert text.count(".png  ") == 6          # --top 0: every image is a row
    assert "the project's exemplar now is phantom_000.png: rank" in text
    assert main(["suggest-exemplar", str(tmp_path / "nothing.lmk")]) == 2
    assert main(["suggest-exemplar", str(lmk), "--top", "-1"]) == 2
