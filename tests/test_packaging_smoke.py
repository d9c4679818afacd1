"""The packaging smoke test, run against the development install's `lmk-studio` command: the
same script checks the PyInstaller build (packaging/build.sh), so it must itself work."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _smoke_module():
    spec = importlib.util.spec_from_file_location("smoke_test", ROOT / "packaging" / "smoke_test.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_smoke_script_passes_on_the_installed_command(capsys) -> None:
    exe = Path(sys.executable).with_name("lmk-studio")
    if not exe.exists():
        found = shutil.which("lmk-studio")
        if found is None:
            pytest.skip("no installed lmk-studio command (pip install -e . first)")
        exe = Path(found)
    assert _smoke_module().main([str(exe), "--gui-seconds", "4"]) == 0
    out = capsys.readouterr().out
    assert "smoke test passed" in out and "exported" in out
