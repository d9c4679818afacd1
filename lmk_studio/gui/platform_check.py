"""Before Qt starts on Linux: are the system libraries of Qt's xcb (X11) plugin there?

When one is missing, Qt aborts inside QApplication() with "Could not load the Qt platform plugin
'xcb'" and, since Qt 6.5, the hint that libxcb-cursor0 is needed, even when that one is installed
and the missing ones are others (issue 12: libxcb-icccm4 and libxcb-keysyms1 on a fresh Debian).
Nothing can be caught after the abort, so the app asks the dynamic linker first (`ldd` on the
plugin and its Qt library, else `ldconfig -p` for a known list) and prints which libraries are
missing and the apt command that installs them; then Qt gets its chance (it may still start on
Wayland).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: soname -> Debian/Ubuntu package; what Qt 6's xcb plugin links against
XCB_LIBS: dict[str, str] = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-xinput.so.0": "libxcb-xinput0",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libdbus-1.so.3": "libdbus-1-3",
}
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def xcb_plugin_files() -> list[Path]:
    """The xcb platform plugin of the installed PySide6 and its Qt library (those that exist)."""
    try:
        import PySide6
    except ImportError:
        return []
    qt = Path(PySide6.__file__).parent / "Qt"
    files = [qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6"]
    return [f for f in files if f.is_file()]


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def missing_libraries(files: list[Path] | None = None) -> list[str]:
    """Sonames the dynamic linker cannot find for the xcb plugin, sorted; [] when all are
    there or nothing could be checked (no ldd and no ldconfig: not Linux, or a bare image)."""
    files = xcb_plugin_files() if files is None else files
    missing: set[str] = set()
    ldd = shutil.which("ldd")
    if ldd and files:
        for f in files:
            out = _run([ldd, str(f)])
            if out is not None:
                missing |= set(_NOT_FOUND.findall(out))
        return sorted(missing)
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if Path("/sbin/ldconfig").exists()
                                            else None)
    out = _run([ldconfig, "-p"]) if ldconfig else None
    if not out:
        return []
    return sorted(so for so in XCB_LIBS if so not in out)


def apt_command(missing: list[str]) -> str:
    """`sudo apt-get install ...` for the missing sonames (unknown ones by their own name)."""
    pkgs = sorted({XCB_LIBS.get(so, so) for so in missing})
    return "sudo apt-get install " + " ".join(pkgs)


def uses_xcb(env: dict[str, str] | None = None, platform: str | None = None) -> bool:
    """True when Qt will try its xcb plugin: Linux, and QT_QPA_PLATFORM unset or naming xcb."""
    env = os.environ if env is None else env
    if not (platform or sys.platform).startswith("linux"):
        return False
    qpa = env.get("QT_QPA_PLATFORM", "")
    return not qpa or "xcb" in qpa


def preflight_message(env: dict[str, str] | None = None, platform: str | None = None,
                      files: list[Path] | None = None) -> str | None:
    """What to tell the user before Qt starts, or None when nothing is missing."""
    if not uses_xcb(env, platform):
        return None
    missing = missing_libraries(files)
    if not missing:
        return None
    return ("lmk-studio: Qt's X11 (xcb) platform plugin needs system libraries that are not "
            f"installed: {', '.join(missing)}.\n"
            f"On Debian/Ubuntu install them with:\n    {apt_command(missing)}\n"
            "(Qt's own message may name only libxcb-cursor0; the list above is what the "
            "dynamic linker reports missing. The command line works without them: "
            "lmk-studio --help.)")
