"""Issue 12 item 9: when Qt's xcb plugin cannot load, the app has already said which system
libraries are missing and the apt command that installs them. The end-to-end case runs the real
`lmk-studio` on X11 where the libraries are missing (this development image lacks
libxcb-icccm4 and libxcb-keysyms1, as the issue's fresh Debian did)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmk_studio.gui import platform_check as pc

LDD_OUT = """\tlinux-vdso.so.1 (0x00007ffd)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x0000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibweird.so.9 => not found
"""


def test_missing_libraries_and_the_apt_command(monkeypatch, tmp_path) -> None:
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"")
    monkeypatch.setattr(pc.shutil, "which", lambda name: "/usr/bin/ldd" if name == "ldd" else None)
    monkeypatch.setattr(pc, "_run", lambda cmd: LDD_OUT)
    assert pc.missing_libraries([plugin]) == ["libweird.so.9", "libxcb-icccm.so.4",
                                              "libxcb-keysyms.so.1"]
    msg = pc.preflight_message(env={}, platform="linux", files=[plugin])
    assert "libxcb-icccm.so.4" in msg and "libxcb-keysyms.so.1" in msg
    assert "sudo apt-get install libweird.so.9 libxcb-icccm4 libxcb-keysyms1" in msg
    # not asked when Qt will not use xcb, nor off Linux
    assert pc.preflight_message(env={"QT_QPA_PLATFORM": "offscreen"}, platform="linux",
                                files=[plugin]) is None
    assert pc.preflight_message(env={}, platform="darwin", files=[plugin]) is None


def test_ldconfig_fallback_without_ldd(monkeypatch) -> None:
    monkeypatch.setattr(pc.shutil, "which",
                        lambda name: "/sbin/ldconfig" if name == "ldconfig" else None)
    have = "\n".join(f"\t{so} (libc6,x86-64) => /lib/{so}" for so in pc.XCB_LIBS
                     if so != "libxcb-cursor.so.0")
    monkeypatch.setattr(pc, "_run", lambda cmd: have)
    assert pc.missing_libraries([]) == ["libxcb-cursor.so.0"]
    assert pc.apt_command(["libxcb-cursor.so.0"]) == "sudo apt-get install libxcb-cursor0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the xcb plugin is Linux's")
def test_the_app_names_the_missing_libraries_before_qt_gives_up(tmp_path) -> None:
    missing = pc.missing_libraries()
    if not missing:
        pytest.skip("every library of the xcb plugin is installed here")
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", DISPLAY=":97", LMK_STUDIO_HOME=str(tmp_path))
    env.pop("WAYLAND_DISPLAY", None)
    r = subprocess.run([sys.executable, "-m", "lmk_studio"], capture_output=True, text=True,
                       env=env, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode != 0  # Qt cannot start without them
    assert "sudo apt-get install" in r.stderr
    for so in missing:
        assert so in r.stderr and pc.XCB_LIBS.get(so, so) in r.stderr
