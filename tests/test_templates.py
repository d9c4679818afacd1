"""Landmark templates: bundled sets, JSON round trip, validation, atomic save."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmk_studio.core.errors import LmkError
from lmk_studio.core.templates import (
    LandmarkDef,
    Template,
    bundled_templates,
    load_template,
    save_template,
)

HAMEDAN_ORDER = [
    "sella", "nasion", "orbitale", "porion", "subspinale", "supramentale", "pogonion",
    "menton", "gnathion", "gonion", "lower incisal incision", "upper incisal incision",
    "upper lip", "lower lip", "subnasale", "soft tissue pogonion", "posterior nasal spine",
    "anterior nasal spine", "articulare",
]


def test_bundled_templates_sizes_and_distinct_colours() -> None:
    b = bundled_templates()
    assert {k: len(v) for k, v in b.items()} == {
        "isbi2015-ceph-19": 19,
        "hand-37": 37,
        "chest-6": 6,
    }
    for t in b.values():
        cols = [lm.color for lm in t]
        assert len(set(cols)) == len(cols), t.name
        assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in cols)
        assert all(lm.description for lm in t), t.name
        assert t.description


def test_ceph_order_matches_hamedan_readme() -> None:
    t = load_template("isbi2015-ceph-19")
    for want, got in zip(HAMEDAN_ORDER, t.names, strict=True):
        assert got.lower().startswith(want), (want, got)


def test_hand_wrist_points_at_0_and_4_and_uncertainty_stated() -> None:
    t = load_template("hand-37")
    assert "wrist" in t[0].name.lower() and "wrist" in t[4].name.lower()
    assert "UNCERTAIN" in t.description
    assert sum("tip" in n.lower() for n in t.names) == 5


def test_round_trip_dict_and_file(tmp_path: Path) -> None:
    t = Template("mine", [LandmarkDef("A", "first", "#112233"), LandmarkDef("Bé 骨", "", "#abcdef")])
    assert Template.from_dict(t.to_dict()) == t
    p = tmp_path / "dir ü" / "mine.json"
    p.parent.mkdir()
    save_template(t, p)
    back = load_template(p)
    assert back == t and back.names == ["A", "Bé 骨"]
    assert [q.name for q in p.parent.iterdir()] == ["mine.json"]  # no temp file left behind
    # and a path given as str with separators works too
    assert load_template(str(p)) == t


def test_names_only_list_gets_distinct_default_colours() -> None:
    t = Template.from_dict({"name": "x", "landmarks": ["a", "b", "c", "d"]})
    assert len({lm.color for lm in t}) == 4


@pytest.mark.parametrize(
    ("d", "needle"),
    [
        ({"name": "x", "landmarks": []}, "no landmarks"),
        ({"name": "x", "landmarks": [{"name": "a"}, {"name": "A"}]}, "used twice"),
        ({"name": "", "landmarks": [{"name": "a"}]}, "name"),
        ({"name": "x", "landmarks": [{"name": "a", "color": "red"}]}, "#rrggbb"),
        ({"name": "x", "landmarks": [{"description": "no name"}]}, "landmark 1 has no name"),
        ({"name": "x"}, "'landmarks' must be a list"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_templates_are_refused(d: object, needle: str) -> None:
    with pytest.raises(LmkError, match=re.escape(needle)):
        Template.from_dict(d)


def test_validate_on_constructed_template() -> None:
    with pytest.raises(LmkError, match="used twice"):
        Template("t", [LandmarkDef("a"), LandmarkDef("a")]).validate()


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LmkError, match="neither a bundled template"):
        load_template("no-such-template")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(LmkError, match=r"bad\.json: not valid JSON"):
        load_template(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"name": "w", "landmarks": []}), encoding="utf-8")
    with pytest.raises(LmkError, match=r"wrong\.json: .*no landmarks"):
        load_template(wrong)


def test_save_refuses_invalid_and_keeps_existing_file(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    good = Template("g", [LandmarkDef("a")])
    save_template(good, p)
    before = p.read_bytes()
    with pytest.raises(LmkError):
        save_template(Template("g", []), p)
    assert p.read_bytes() == before
    with pytest.raises(LmkError, match="cannot write template"):
        save_template(good, tmp_path / "missing-dir" / "t.json")


def test_full_disk_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    p = tmp_path / "t.json"
    save_template(Template("old", [LandmarkDef("a")]), p)
    before = p.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(LmkError, match=r"t\.json: cannot write template \(No space left"):
        save_template(Template("new", [LandmarkDef("b")]), p)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["t.json"]


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"name": 1' + "0" * 5000 + "}",
                                  '{"name": "t", "landmarks": 5}', '{"name": "t", "landmarks":'
                                  ' [{"name": ["x"]}]}', "[1, 2]"])
def test_hostile_template_file_is_an_error_naming_it(tmp_path, text):
    """Issue 13: a template file is user input like any other (deep nesting raised
    RecursionError)."""
    p = tmp_path / "t.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(LmkError, match=r"t\.json"):
        load_template(p)
