"""The top-level parser: subcommands are never taken for a project to open, and a bare project
path goes to the app."""

from __future__ import annotations

import pytest

from lmk_studio import cli


def test_subcommand_is_not_swallowed_by_the_project_positional(tmp_path, capsys) -> None:
    missing = tmp_path / "nope.lmk"
    assert cli.main(["info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nope.lmk" in err and "invalid choice" not in err


def test_bare_project_path_opens_the_app(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_run_app(project, demo):
        seen.update(project=project, demo=demo)
        return 0

    import lmk_studio.gui.app as app

    monkeypatch.setattr(app, "run_app", fake_run_app)
    assert cli.main([str(tmp_path / "p.lmk")]) == 0
    assert seen == {"project": str(tmp_path / "p.lmk"), "demo": False}
    assert cli.main(["--demo"]) == 0
    assert seen == {"project": None, "demo": True}


def test_unknown_flag_exits_with_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "p.lmk", "--nonsense"])
    assert exc.value.code == 2
