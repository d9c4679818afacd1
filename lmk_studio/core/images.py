"""X-ray image I/O: PNG/JPEG/BMP/TIFF (8/16-bit, grey or colour -> grey) and DICOM.

Design notes
- Files are read as bytes with Python and decoded from memory (``cv2.imdecode``) so that any
  unicode path works on every OS (``cv2.imread`` cannot open non-ASCII paths on Windows).
- ``read_metadata`` never decodes pixels: it parses the PNG IHDR, JPEG SOF, BMP header, TIFF IFD
  or the DICOM header (pydicom, ``stop_before_pixels``) and makes cheap truncation checks (PNG
  IEND chunk, JPEG end-of-image marker, TIFF strip/tile extents, BMP pixel array size, DICOM pixel
  data length against the file size), so a folder of thousands of images lists in seconds.
- ``XrayImage.pixels`` keeps the full dynamic range as float32 (modality LUT applied for DICOM);
  the display window and the engine's [0, 1] view are derived from it.
- Every failure is an ``ImageLoadError(path, problem)`` with the problem in words.
- Pixels are used as stored: JPEG EXIF orientation is not applied (width/height then match the
  header and every landmark coordinate refers to the stored pixel grid).
- Bounded work for any input (a shared folder may hold anything): only regular files are opened
  (a FIFO named ``x.png`` would block forever), an image over ``max_pixels()`` (64 megapixels
  unless ``LMK_STUDIO_MAX_PIXELS`` says otherwise) or a file larger than such an image could be
  is refused *before* decoding, every PNG chunk must fit in the file, a deflated DICOM is
  inflated by us with a cap (pydicom would inflate all of it at once), and pydicom's header
  parse runs on a read budget, so a crafted header of millions of tiny elements fails in a
  second instead of taking minutes. A JPEG / JPEG-LS / JPEG 2000 frame in a DICOM is checked by
  its codestream's own size (SOF / SIZ) before the codec runs: codecs allocate what the
  codestream says, whatever Rows x Columns say.
- The content decides the format, the extension is a hint: ``DICM`` at offset 128 makes a file
  DICOM even when its preamble is a TIFF header (dual-personality files), as in pydicom.
- Multi-frame DICOM: each frame is an image, ``file.dcm#k`` (1-based), or the file is refused
  with its frame count (``dicom_frames_mode``). Colour (RGB, YBR, palette) becomes grey by
  BT.601 luma, and ``ImageMeta.conversion`` says so.
- The pixel limit and the frames choice are user settings (``[images]`` in the app's INI file,
  read here without Qt); an environment variable overrides each for one run.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lmk_studio.core.errors import ImageLoadError, LmkError
from lmk_studio.core.fileio import FileRefused, open_regular

SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", "",
)
_RASTER_KIND = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff",
}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: above any X-ray detector; ~0.3 GB as float32
MAX_PIXELS_ENV = "LMK_STUDIO_MAX_PIXELS"
SETTINGS_FILE = "lmk_studio.ini"  # the app's settings (gui.settings writes it with QSettings)
SETTINGS_SECTION = "images"  # keys below are "images/<key>" in QSettings' terms
MAX_PIXELS_KEY = "max_pixels"
DICOM_FRAMES_KEY = "dicom_frames"
DICOM_FRAMES_ENV = "LMK_STUDIO_DICOM_FRAMES"
FRAMES_AS_IMAGES = "images"  # each frame of a multi-frame DICOM is an image, "file.dcm#3"
FRAMES_REFUSED = "refuse"  # a multi-frame DICOM is refused with its frame count
DEFAULT_DICOM_FRAMES = FRAMES_AS_IMAGES
GREY_FROM_RGB = "grey = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601 luma)"
_HEADER_SLACK = 64 * 2**20  # bytes a file may hold beyond its pixels (headers, DICOM tags)
_BYTES_PER_PIXEL_MAX = 8  # 16-bit RGBA: the largest uncompressed pixel we read
DICOM_HEADER_BYTES = 64 * 2**20  # a deflated DICOM's header is inflated up to this much
DICOM_MAX_READS = 500_000  # pydicom's read calls per parse (~2 per element): about 1 s
PNG_MAX_CHUNKS = 1_000_000
SPACING_PIXEL = "PixelSpacing"
SPACING_IMAGER = "ImagerPixelSpacing (at detector)"


@dataclass(frozen=True)
class ImageMeta:
    """What is known without decoding pixels. ``spacing`` is (row, col) mm per pixel."""

    path: Path
    width: int
    height: int
    bit_depth: int
    kind: str
    spacing: tuple[float, float] | None = None
    spacing_source: str | None = None
    window: tuple[float, float] | None = None
    photometric: str | None = None
    frames: int = 1  # frames in the file (DICOM NumberOfFrames)
    frame: int | None = None  # 1-based frame this image is ("file.dcm#3"), None for the file
    conversion: str | None = None  # how colour became grey, in words; None for grey files


class MultiFrameDicom(ImageLoadError):
    """A multi-frame DICOM named as one image while frames are offered as images: the caller
    that adds images (``Project.add_images``) adds ``frame_path(path, k)`` for each frame;
    every other caller refuses it like any unreadable file, with this message."""

    def __init__(self, path: str | Path, frames: int, meta: ImageMeta) -> None:
        self.frames = int(frames)
        self.meta = meta  # frame 1's header: every frame shares its size and spacing
        name = Path(path).name
        super().__init__(
            path, f"multi-frame DICOM ({frames} frames): each frame is an image of its own, "
            f"named {name}#1 ... {name}#{frames} (added that way to a project)")


@dataclass
class XrayImage:
    """Decoded image: float32 HxW, full dynamic range, DICOM modality LUT applied and
    MONOCHROME1 already inverted (so bright = dense everywhere; ``meta.photometric`` keeps the
    file's original value)."""

    meta: ImageMeta
    pixels: np.ndarray
    _range: tuple[float, float] | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def default_range(self) -> tuple[float, float]:
        """The (low, high) intensities mapped to black / white when no window is given.

        - DICOM with a window: that window (chosen by the modality for viewing).
        - 8-bit files: 0..255 as stored. Exported 8-bit images are already windowed by whoever
          produced them; stretching each one separately would make the same tissue differ in
          brightness between images, which hurts matching across the dataset.
        - Deeper data (16-bit, float, DICOM without a window): robust percentiles 0.5 / 99.5 of
          the image. Raw detector values use a small, image-dependent part of 0..65535 (dividing
          by 65535 gives an almost black image) and a few extreme pixels (collimator edges,
          burnt-in markers) would otherwise dominate a plain min/max.
        """
        if self._range is None:
            self._range = self._compute_range()
        return self._range

    def _compute_range(self) -> tuple[float, float]:
        if self.meta.window is not None:
            return _window_bounds(*self.meta.window)
        if self.meta.bit_depth <= 8 and self.meta.kind != "dicom":
            return 0.0, 255.0
        flat = self.pixels.ravel()
        if not np.isfinite(flat).all():
            flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return 0.0, 1.0
        if flat.size > 4_000_000:  # a regular subsample gives the same percentiles to < 0.1 %
            flat = flat[:: flat.size // 2_000_000]
        lo, hi = (float(v) for v in np.percentile(flat, [0.5, 99.5]))
        if hi <= lo:
            lo, hi = float(flat.min()), float(flat.max())
            if hi <= lo:
                hi = lo + 1.0
        return lo, hi

    def normalized(self) -> np.ndarray:
        """The engine's view: float32 HxW in [0, 1] (see ``default_range`` for why). A new array
        on every call: the range is cached, the cheap scaling is not (no shared mutable state)."""
        lo, hi = self.default_range()
        return _scale(self.pixels, lo, hi)

    def to_uint8(self, window: tuple[float, float] | None = None) -> np.ndarray:
        """Display image: ``window`` = (center, width) in pixel units, else the default view."""
        if window is None:
            n = self.normalized()
        else:
            c, w = float(window[0]), max(float(window[1]), 1e-6)
            n = _scale(self.pixels, *_window_bounds(c, w))
        return np.rint(n * 255.0).astype(np.uint8)


def _window_bounds(c: float, w: float) -> tuple[float, float]:
    """DICOM PS3.3 C.11.2.1.2.1 linear window: the values mapped to 0 and to 1."""
    if w > 1.0:
        return c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0
    return c - w / 2.0, c + w / 2.0


def _scale(px: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    out = (px.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(1.0 / span)
    np.clip(out, 0.0, 1.0, out=out)
    np.nan_to_num(out, copy=False, nan=0.0)
    return out


# --------------------------------------------------------------------------- limits


_settings_cache: dict[str, tuple[tuple, dict[str, str]]] = {}
_settings_paths: dict[str | None, Path] = {}


def settings_file() -> Path:
    """The user's settings file (the one ``gui.settings`` writes): an INI file. Its place is
    worked out once per ``LMK_STUDIO_HOME`` (``config_dir`` creates folders): the limits are
    read for every image of a folder scan."""
    home = os.environ.get("LMK_STUDIO_HOME")
    path = _settings_paths.get(home)
    if path is None:
        from lmk_studio.core.paths import config_dir

        path = _settings_paths[home] = config_dir() / SETTINGS_FILE
    return path


def user_image_settings() -> dict[str, str]:
    """The ``[images]`` values of the user's settings file, read without Qt.

    Core reads the file itself (one stat per call, parsed again only when it changed) rather
    than through a hook the app installs at start: the command line, the app and the engine's
    job processes (whatever way they are started) then all obey the same setting, and no
    start-up order can leave one of them on the default. An unreadable file is no settings.
    """
    try:
        path = settings_file()
        st = path.stat()
    except OSError:
        return {}
    key = (str(path), st.st_mtime_ns, st.st_size)
    hit = _settings_cache.get("images")
    if hit is not None and hit[0] == key:
        return hit[1]
    import configparser

    values: dict[str, str] = {}
    if st.st_size <= 1 << 20:  # a settings file is a few KB; anything else is not ours
        cp = configparser.RawConfigParser(strict=False, interpolation=None)
        try:
            cp.read_string(path.read_text(encoding="utf-8", errors="replace"))
            if cp.has_section(SETTINGS_SECTION):
                values = {k: v.strip().strip('"') for k, v in cp.items(SETTINGS_SECTION)}
        except (OSError, configparser.Error):
            values = {}
    _settings_cache["images"] = (key, values)
    return values


def _image_setting(env: str, key: str) -> tuple[str, str]:
    """(value, where it came from): the environment variable (one run) wins over the user's
    settings file; "" when neither sets it."""
    raw = os.environ.get(env, "").strip()
    if raw:
        return raw, f"{env}={raw!r}"
    raw = user_image_settings().get(key, "").strip()
    return raw, f"{settings_file()}: [{SETTINGS_SECTION}] {key} = {raw!r}"


def max_pixels() -> int:
    """The largest image (width x height) read: ``LMK_STUDIO_MAX_PIXELS`` (for one run), else
    ``max_pixels`` under ``[images]`` in the user's settings file, else 64 megapixels."""
    raw, where = _image_setting(MAX_PIXELS_ENV, MAX_PIXELS_KEY)
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        v = int(float(raw))
    except (ValueError, OverflowError):
        v = 0
    if v <= 0:
        raise LmkError(f"{where}: not a positive number of pixels "
                       f"(default {DEFAULT_MAX_PIXELS})")
    return v


def raise_limit_hint() -> str:
    """How to raise the pixel limit, for refusal messages."""
    return (f"if the image is real, raise the limit: {MAX_PIXELS_KEY} = N under "
            f"[{SETTINGS_SECTION}] in {settings_file()} (the app and the command line read it), "
            f"or the environment variable {MAX_PIXELS_ENV}=N for one run")


def dicom_frames_mode() -> str:
    """What a multi-frame DICOM becomes: ``"images"`` (each frame an image, ``file.dcm#3``) or
    ``"refuse"``. ``LMK_STUDIO_DICOM_FRAMES`` for one run, else ``dicom_frames`` under
    ``[images]`` in the user's settings file, else ``"images"``.

    Offering the frames is the default because refusing leaves the user no way on inside the
    app (another program must split the file first), while frames added as images are named
    after their file and frame, can be removed like any image, and cost a header read only.
    """
    raw, where = _image_setting(DICOM_FRAMES_ENV, DICOM_FRAMES_KEY)
    if not raw:
        return DEFAULT_DICOM_FRAMES
    v = raw.lower()
    if v not in (FRAMES_AS_IMAGES, FRAMES_REFUSED):
        raise LmkError(f"{where}: not one of {FRAMES_AS_IMAGES!r} (each frame an image) or "
                       f"{FRAMES_REFUSED!r}")
    return v


def max_file_bytes() -> int:
    """No image within the pixel limit needs a bigger file than this (uncompressed 16-bit
    RGBA plus generous room for headers): a larger file is refused unread."""
    return max_pixels() * _BYTES_PER_PIXEL_MAX + _HEADER_SLACK


def _check_pixels(path: Path, w: int, h: int, what: str = "") -> None:
    """Refuse an image over the pixel limit (``what`` prefixes the size in the message)."""
    n = int(w) * int(h)
    lim = max_pixels()
    if n > lim:
        raise ImageLoadError(path, f"{what}{w} x {h} pixels ({n / 1e6:.1f} megapixels) is "
                                   f"{_over_limit(n, lim)}")


def _over_limit(n: int, lim: int) -> str:
    return (f"more than the limit of {lim / 1e6:g} megapixels; refused before decoding (it "
            f"would need about {n * 4 / 2**30:.1f} GB of memory); {raise_limit_hint()}")


def _open_image(path: Path) -> tuple[BinaryIO, int]:
    """The file opened for reading, after checks that cost nothing: a regular file, not larger
    than any image within the pixel limit."""
    try:
        f, size = open_regular(path, what="image file")
    except FileRefused as e:
        raise ImageLoadError(path, e.problem) from None
    except OSError as e:
        raise ImageLoadError(path, _os_problem(e)) from None
    cap = max_file_bytes()
    if size > cap:
        f.close()
        raise ImageLoadError(
            path, f"the file is {size / 2**20:.0f} MB, more than any image within the pixel "
            f"limit ({max_pixels() / 1e6:g} megapixels) can need ({cap / 2**20:.0f} MB); "
            f"refused unread; {raise_limit_hint()}")
    return f, size


# --------------------------------------------------------------------------- helpers

_FRAME_RE = re.compile(r"^(.+)#([1-9][0-9]{0,8})$")


def frame_path(path: str | Path, frame: int) -> Path:
    """The name of frame ``frame`` (1-based, as DICOM numbers frames) of a multi-frame file."""
    return Path(f"{os.fspath(path)}#{int(frame)}")


def split_frame(path: str | Path) -> tuple[Path, int | None]:
    """(the file, its 1-based frame) for ``file.dcm#3``; (path, None) for a plain file. A file
    that really is named ``x#3`` on disk stays that file."""
    p = Path(path)
    m = _FRAME_RE.match(p.name)
    if m is None or os.path.lexists(p):
        return p, None
    return p.with_name(m.group(1)), int(m.group(2))


def _kind_for(path: Path) -> str:
    suf = path.suffix.lower()
    if suf in _RASTER_KIND:
        return _RASTER_KIND[suf]
    if suf in (".dcm", ".dicom"):
        return "dicom"
    # the extension is only a hint: any file with the DICOM preamble is DICOM (".IMA", "" ...)
    if _has_dicm_preamble(path):
        return "dicom"
    if not os.path.lexists(path):
        raise ImageLoadError(path, "file not found")
    raise ImageLoadError(path, f"unsupported file type {suf or '(no extension)'!r} (not DICOM "
                         "either: no DICM preamble)")


def _has_dicm_preamble(path: Path) -> bool:
    try:
        f, _ = open_regular(path)
    except (OSError, LmkError):
        return False
    try:
        with f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _sniff(head: bytes) -> str | None:
    """The real format from magic bytes (a .png may be a renamed JPEG: read it as a JPEG).

    ``DICM`` at offset 128 is looked for first: the DICOM standard (PS3.10 7.1) leaves the
    128-byte preamble to the application, and modalities write a TIFF header there so that one
    file is both a TIFF and a DICOM ("dual personality"). pydicom decides by ``DICM`` alone, and
    so do we: such a file is DICOM whatever its first bytes say.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_SIG):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def _os_problem(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image file"
    return f"cannot read the file ({e.strerror or e})"


def _describe_garbage(head: bytes) -> str:
    if not head:
        return "the file is empty (0 bytes)"
    try:
        txt = head[:64].decode("utf-8")
        if all(ch.isprintable() or ch in "\r\n\t" for ch in txt):
            return "not an image: the file contains text"
    except UnicodeDecodeError:
        pass
    return "not a recognised image format (unknown file signature)"


# --------------------------------------------------------------------------- raster headers


def _png_meta(path: Path, f: BinaryIO, size: int) -> tuple[int, int, int, str]:
    f.seek(0)
    head = f.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise ImageLoadError(path, "corrupt PNG: the header (IHDR) is missing or truncated")
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    if w == 0 or h == 0:
        raise ImageLoadError(path, f"corrupt PNG: image size {w}x{h}")
    _check_pixels(path, w, h)
    _png_walk_chunks(path, f, size)
    photometric = {0: "grey", 2: "rgb", 3: "palette", 4: "grey+alpha", 6: "rgba"}.get(ctype)
    if photometric is None:
        raise ImageLoadError(path, f"corrupt PNG: unknown colour type {ctype}")
    return int(w), int(h), 8 if ctype == 3 else int(depth), photometric


def _png_walk_chunks(path: Path, f: BinaryIO, size: int) -> None:
    """Every chunk's declared length must fit in the file, up to IEND: a length of 2**31
    would otherwise make the decoder allocate gigabytes for a file of a few bytes. Reads 8
    bytes per chunk (a real PNG has tens to thousands)."""
    pos, n = 8, 0
    while True:
        f.seek(pos)
        hdr = f.read(8)
        if len(hdr) < 8:
            raise ImageLoadError(path, "truncated PNG: the file ends before its last chunk (IEND)")
        length, ctype = struct.unpack(">I4s", hdr)
        name = ctype.decode("latin-1")
        if length > 0x7FFFFFFF:
            raise ImageLoadError(path, f"corrupt PNG: chunk {name!r} at byte {pos} declares "
                                 f"{length} bytes (more than PNG allows)")
        if pos + 12 + length > size:
            raise ImageLoadError(
                path, f"truncated PNG: chunk {name!r} at byte {pos} declares {length} bytes "
                f"but the file has only {max(0, size - pos - 12)} after it (cut short or corrupt)")
        if ctype == b"IEND":
            return
        pos += 12 + length
        n += 1
        if n > PNG_MAX_CHUNKS:
            raise ImageLoadError(path, f"corrupt PNG: more than {PNG_MAX_CHUNKS} chunks")


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_meta(path: Path, f: BinaryIO, size: int) -> tuple[int, int, int, str]:
    f.seek(2)
    while True:
        b = f.read(1)
        while b and b != b"\xff":
            b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            raise ImageLoadError(path, "corrupt or truncated JPEG: no frame header (SOF) found")
        marker = b[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageLoadError(path, "corrupt JPEG: image data before the frame header (SOF)")
        ln = f.read(2)
        if len(ln) < 2:
            raise ImageLoadError(path, "truncated JPEG: the file ends inside its header")
        seg_len = struct.unpack(">H", ln)[0]
        if marker in _SOF:
            seg = f.read(6)
            if len(seg) < 6:
                raise ImageLoadError(path, "truncated JPEG: the frame header is cut off")
            precision, h, w, ncomp = struct.unpack(">BHHB", seg)
            if w == 0 or h == 0:
                raise ImageLoadError(path, f"corrupt JPEG: image size {w}x{h}")
            _check_pixels(path, w, h)
            if not _jpeg_has_eoi(f, size):
                raise ImageLoadError(
                    path, "truncated JPEG: the end-of-image marker is missing (file cut short)"
                )
            return int(w), int(h), int(precision), "grey" if ncomp == 1 else "colour"
        f.seek(seg_len - 2, os.SEEK_CUR)


def _jpeg_has_eoi(f: BinaryIO, size: int) -> bool:
    """End-of-image marker after the frame header. Entropy-coded data never holds FF D9 (0xFF is
    stuffed), so finding it is proof enough. Fast path: the last 4 KiB; files with a longer
    trailer are scanned from the frame header on."""
    here = f.tell()
    f.seek(max(here, size - 4096))
    if b"\xff\xd9" in f.read():
        return True
    f.seek(here)
    tail = b""
    while chunk := f.read(1 << 20):
        if b"\xff\xd9" in tail[-1:] + chunk:
            return True
        tail = chunk
    return False


def _bmp_meta(path: Path, f: BinaryIO, size: int) -> tuple[int, int, int, str]:
    f.seek(0)
    head = f.read(54)
    if len(head) < 26:
        raise ImageLoadError(path, "truncated BMP: the header is cut off")
    off = struct.unpack("<I", head[10:14])[0]
    dib = struct.unpack("<I", head[14:18])[0]
    if dib == 12:
        w, h = struct.unpack("<HH", head[18:22])
        bpp = struct.unpack("<H", head[24:26])[0]
        comp = 0
    else:
        if len(head) < 34:
            raise ImageLoadError(path, "truncated BMP: the header is cut off")
        w, h = struct.unpack("<ii", head[18:26])
        bpp = struct.unpack("<H", head[28:30])[0]
        comp = struct.unpack("<I", head[30:34])[0]
    h = abs(h)
    if w <= 0 or h == 0:
        raise ImageLoadError(path, f"corrupt BMP: image size {w}x{h}")
    _check_pixels(path, w, h)
    if comp in (0, 3) and bpp in (1, 4, 8, 16, 24, 32):
        row = ((w * bpp + 31) // 32) * 4
        if off + row * h > size:
            raise ImageLoadError(path, "truncated BMP: the pixel data is cut short")
    return int(w), int(h), 8, "grey" if bpp <= 8 else "colour"


_TIFF_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 6: 1, 7: 1, 8: 2, 9: 4, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
_TIFF_FMT = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 16: "Q", 17: "q"}
_TIFF_TAGS = (256, 257, 258, 262, 273, 277, 279, 324, 325)


def _tiff_meta(path: Path, f: BinaryIO, size: int) -> tuple[int, int, int, str]:
    f.seek(0)
    head = f.read(16)
    bo = "<" if head[:2] == b"II" else ">"
    tags: dict[int, list[int]] = {}
    try:
        big = struct.unpack(bo + "H", head[2:4])[0] == 43
        if big:
            f.seek(struct.unpack(bo + "Q", head[8:16])[0])
            n = struct.unpack(bo + "Q", f.read(8))[0]
            ent, cnt_fmt, inline = 20, "Q", 8
        else:
            f.seek(struct.unpack(bo + "I", head[4:8])[0])
            n = struct.unpack(bo + "H", f.read(2))[0]
            ent, cnt_fmt, inline = 12, "I", 4
        if n == 0 or n > 4096:
            raise ImageLoadError(path, "corrupt TIFF: the first directory is empty or damaged")
        raw = f.read(n * ent)
        if len(raw) < n * ent:
            raise ImageLoadError(path, "truncated TIFF: the image directory is cut off")
        for k in range(n):
            e = raw[k * ent:(k + 1) * ent]
            tag, typ = struct.unpack(bo + "HH", e[:4])
            if tag not in _TIFF_TAGS or typ not in _TIFF_FMT:
                continue
            count = struct.unpack(bo + cnt_fmt, e[4:4 + inline])[0]
            if count > 1_000_000:  # more strips than any image within the pixel limit has
                raise ImageLoadError(path, f"corrupt TIFF: tag {tag} holds {count} values")
            if count == 0:  # an empty tag says nothing (and has no first value)
                continue
            nbytes = _TIFF_SIZE[typ] * count
            if nbytes <= inline:
                data = e[4 + inline:4 + inline + nbytes]
            else:
                ptr = struct.unpack(bo + cnt_fmt, e[4 + inline:4 + 2 * inline])[0]
                if ptr + nbytes > size:
                    raise ImageLoadError(path, "truncated TIFF: a tag points past the file end")
                pos = f.tell()
                f.seek(ptr)
                data = f.read(nbytes)
                f.seek(pos)
            tags[tag] = list(struct.unpack(bo + _TIFF_FMT[typ] * count, data))
    except struct.error:
        raise ImageLoadError(path, "truncated or corrupt TIFF header") from None
    if 256 not in tags or 257 not in tags:
        raise ImageLoadError(path, "corrupt TIFF: image width/height tags are missing")
    w, h = tags[256][0], tags[257][0]
    if w <= 0 or h <= 0:
        raise ImageLoadError(path, f"corrupt TIFF: image size {w}x{h}")
    _check_pixels(path, w, h)
    bits = max(tags.get(258, [1]))
    spp = tags.get(277, [1])[0]
    offs, cnts = tags.get(273) or tags.get(324), tags.get(279) or tags.get(325)
    if offs and cnts and max(o + c for o, c in zip(offs, cnts, strict=False)) > size:
        raise ImageLoadError(path, "truncated TIFF: the pixel data is cut short")
    photo = {0: "MINISWHITE", 1: "MINISBLACK", 2: "rgb", 3: "palette"}.get(
        tags.get(262, [1])[0], "other"
    )
    if spp >= 3 and photo not in ("rgb", "palette"):
        photo = "colour"
    return int(w), int(h), int(bits), photo


_RASTER_META = {"png": _png_meta, "jpeg": _jpeg_meta, "bmp": _bmp_meta, "tiff": _tiff_meta}


# --------------------------------------------------------------------------- DICOM


class _TooComplex(Exception):
    """Raised inside pydicom's parse when the read budget is spent."""


class _Budget:
    """The file-like pydicom reads from: the real file (or the inflated bytes), with a cap on
    read calls. pydicom parses element by element (about two reads each); a header of
    millions of tiny elements would take minutes, a real one has a few thousand."""

    def __init__(self, raw: BinaryIO, name: str) -> None:
        self._raw = raw
        self.name = name
        self.reads = 0
        self.max_reads = DICOM_MAX_READS

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads > self.max_reads:
            raise _TooComplex
        return self._raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:  # the caller owns the real file
        pass


def _at_pixels(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) in (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _file_meta(path: Path, f: BinaryIO) -> tuple[bytes | None, Any, int]:
    """(preamble, file meta dataset, offset of the dataset) read by pydicom's own helpers."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    f.seek(0)
    preamble = read_preamble(f, True)
    meta = _read_file_meta_info(f)
    return preamble, meta, f.tell()


def _inflate(path: Path, f: BinaryIO, keep: int, cap: int) -> tuple[bytes, int]:
    """Inflate a deflated DICOM dataset from ``f``'s position: (the first ``keep`` bytes, the
    total inflated size). More than ``cap`` bytes is refused as a decompression bomb; the
    inflated data beyond ``keep`` is only counted, never held."""
    import zlib

    d = zlib.decompressobj(-zlib.MAX_WBITS)
    kept: list[bytes] = []
    n_kept = total = 0

    def take(out: bytes) -> None:
        nonlocal n_kept, total
        total += len(out)
        if total > cap:
            raise ImageLoadError(
                path, f"the deflated DICOM data inflates to more than {cap / 2**20:.0f} MB, more "
                "than its image can need; refused (a decompression bomb or a damaged file)")
        if n_kept < keep:
            part = out[:keep - n_kept]
            kept.append(part)
            n_kept += len(part)

    try:
        while not d.eof:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            buf = chunk
            while buf and not d.eof:
                take(d.decompress(buf, 1 << 20))
                buf = d.unconsumed_tail
        take(d.flush(1 << 20))
    except zlib.error as e:
        raise ImageLoadError(path, f"corrupt deflated DICOM data ({e})") from None
    return b"".join(kept), total


def _read_dicom(path: Path, f: BinaryIO, size: int, header_only: bool,
                inflate_cap: int | None = None) -> tuple[Any, BinaryIO, int]:
    """Parse the DICOM in ``f``: (dataset, the stream positioned after what was parsed, the
    size of that stream). A deflated dataset is inflated here, with a cap, and parsed from
    memory; pydicom's own path would inflate all of it at once, however large."""
    import io

    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset

    stop = _at_pixels if header_only else None
    try:
        preamble, meta, offset = _file_meta(path, f)
        tsx = meta.get("TransferSyntaxUID") if meta else None
        deflated = tsx is not None and tsx == pydicom.uid.DeflatedExplicitVRLittleEndian
    except _TooComplex:
        raise
    except Exception:  # noqa: BLE001 - let dcmread (force=True) judge a damaged preamble
        deflated = False
    if not deflated:
        f.seek(0)
        ds = pydicom.dcmread(_Budget(f, str(path)), stop_before_pixels=header_only, force=True)
        return ds, f, size
    f.seek(offset)
    cap = inflate_cap if inflate_cap is not None else max_file_bytes()
    data, total = _inflate(path, f, DICOM_HEADER_BYTES if header_only else cap, cap)
    stream = io.BytesIO(data)
    body = read_dataset(_Budget(stream, str(path)), False, True, stop_when=stop)
    if header_only and stream.tell() >= len(data) and total > len(data):
        raise ImageLoadError(path, f"the DICOM header is larger than {DICOM_HEADER_BYTES >> 20} "
                             "MB once inflated; refused")
    ds = FileDataset(str(path), body, preamble, meta, False, True)
    return ds, stream, total


def _dicom_header(path: Path, f: BinaryIO, size: int):
    """(dataset without pixels, whether a pixel data element follows).

    pydicom's ``stop_before_pixels`` leaves the stream positioned at the pixel data element when
    there is one, so we read that element's header ourselves: presence and declared length
    (checked against the data size: a cut-short file is refused before any decode) cost a
    12-byte read instead of reading the pixels.
    """
    from pydicom.errors import InvalidDicomError

    try:
        ds, stream, end = _read_dicom(path, f, size, header_only=True)
        if not ds.file_meta and "SOPClassUID" not in ds and "Rows" not in ds:
            raise ImageLoadError(path, "not a DICOM file (no DICOM header found)")
        tsx = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
        little = True if tsx is None else bool(tsx.is_little_endian)
        pos = stream.tell()
        hdr = stream.read(12)
        if len(hdr) < 8:
            return ds, False
        bo = "<" if little else ">"
        if struct.unpack(bo + "HH", hdr[:4]) not in _PIXEL_TAGS:
            return ds, False
        explicit = hdr[4:6].isalpha() and hdr[4:6].isupper()
        if not explicit:
            length, hlen = struct.unpack(bo + "I", hdr[4:8])[0], 8
        elif hdr[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
            length, hlen = struct.unpack(bo + "I", hdr[8:12])[0], 12
        else:
            length, hlen = struct.unpack(bo + "H", hdr[6:8])[0], 8
        if length != 0xFFFFFFFF and pos + hlen + length > end:
            raise ImageLoadError(
                path,
                f"truncated DICOM: the pixel data declares {length} bytes but only "
                f"{max(0, end - pos - hlen)} are in the file",
            )
        return ds, True
    except ImageLoadError:
        raise
    except _TooComplex:
        raise ImageLoadError(path, _too_complex()) from None
    except RecursionError:
        raise ImageLoadError(path, "corrupt DICOM header: sequences nested too deeply") from None
    except OSError as e:
        raise ImageLoadError(path, _os_problem(e)) from None
    except InvalidDicomError as e:
        raise ImageLoadError(path, f"not a valid DICOM file ({e})") from None
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to read this DICOM header") from None
    except Exception as e:  # pydicom raises many types on damaged headers
        raise ImageLoadError(path, f"corrupt DICOM header ({type(e).__name__}: {e})") from None


_JPEG_LS_SOF = 0xF7  # SOF55
_JPEG_LS_LSE = 0xF8  # LSE: JPEG-LS parameters; ID 4 carries sizes too large for SOF55


def codestream_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) a JPEG, JPEG-LS or JPEG 2000 codestream declares, read from
    its SOF / SIZ marker (a JP2 wrapper is looked through); None when none is found.

    A decoder allocates what the codestream says, not what the DICOM header says: a header of
    16 x 16 over a codestream of 50000 x 50000 decodes to gigabytes before any size check on the
    result. A width or height of 0 means it is set later (JPEG DNL marker, JPEG-LS LSE) and is
    returned as 0 unless an LSE ID 4 before the scan gives it."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_codestream_size(data)
    k = data.find(b"\xff\x4f\xff\x51", 0, 1 << 20)  # SOC + SIZ (raw J2K, or inside a JP2)
    if k < 0 or len(data) < k + 42:
        return None
    xs, ys, xo, yo = struct.unpack(">IIII", data[k + 8:k + 24])
    comps = struct.unpack(">H", data[k + 40:k + 42])[0]
    return max(0, xs - xo), max(0, ys - yo), comps


def _jpeg_codestream_size(data: bytes) -> tuple[int, int, int] | None:
    pos, n, size = 2, len(data), None
    while pos < n:
        if data[pos] != 0xFF:  # libjpeg skips stray bytes between segments too
            pos += 1
            continue
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue
        if marker in (0xD9, 0xDA) or pos + 2 > n:  # EOI / SOS: the header is over
            break
        seg = struct.unpack(">H", data[pos:pos + 2])[0]
        body = data[pos + 2:pos + seg]
        if (marker in _SOF or marker == _JPEG_LS_SOF) and size is None and len(body) >= 6:
            _, h, w, comps = struct.unpack(">BHHB", body[:6])
            size = (w, h, comps)
            if w and h:
                return size
        elif marker == _JPEG_LS_LSE and size is not None and body[:1] == b"\x04" \
                and len(body) >= 2:
            wxy = body[1]
            if 1 <= wxy <= 4 and len(body) >= 2 + 2 * wxy:
                h = int.from_bytes(body[2:2 + wxy], "big")
                w = int.from_bytes(body[2 + wxy:2 + 2 * wxy], "big")
                return w or size[0], h or size[1], size[2]
        pos += max(seg, 2)
    return size


def _codec_of(tsx: Any) -> str | None:
    from pydicom import uid

    if tsx in uid.JPEGTransferSyntaxes:
        return "JPEG"
    if tsx in uid.JPEGLSTransferSyntaxes:
        return "JPEG-LS"
    if tsx in uid.JPEG2000TransferSyntaxes:
        return "JPEG 2000"
    return None


def _check_codestream(path: Path, meta: ImageMeta, ds: Any) -> None:
    """Before a JPEG / JPEG-LS / JPEG 2000 frame is decoded: its codestream's own size must be
    the header's and within the pixel limit, and it may hold at most 4 components (openjpeg
    allocates 4 bytes per pixel per component, and SIZ allows 16384 of them)."""
    from pydicom.encaps import get_frame

    tsx = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
    codec = _codec_of(tsx)
    if codec is None or "PixelData" not in ds:
        return
    index = (meta.frame - 1) if meta.frame is not None else 0
    which = f" of frame {meta.frame}" if meta.frame is not None else ""
    try:
        data = get_frame(ds.PixelData, index, number_of_frames=meta.frames)
    except Exception as e:  # noqa: BLE001 - damaged item tags, offsets past the end...
        raise ImageLoadError(path, f"cannot find the {codec} data{which} in the pixel data "
                             f"({type(e).__name__}: {str(e)[:200]})") from None
    got = codestream_size(data)
    if got is None:
        raise ImageLoadError(path, f"the {codec} data{which} has no frame header (no "
                             f"{'SIZ' if codec == 'JPEG 2000' else 'SOF'} marker): damaged")
    w, h, comps = got
    if w == 0 or h == 0:
        raise ImageLoadError(path, f"the {codec} codestream{which} leaves its size ({w} x {h}) "
                             "to be set after the image data, so it cannot be checked before "
                             "decoding; refused")
    if w * h > max_pixels():
        raise ImageLoadError(
            path, f"the {codec} codestream{which} declares {w} x {h} pixels ({w * h / 1e6:.1f} "
            f"megapixels) although the header says {meta.width} x {meta.height}: "
            f"{_over_limit(w * h, max_pixels())}")
    if comps > 4:
        raise ImageLoadError(path, f"the {codec} codestream{which} declares {comps} colour "
                             "components (an image has at most 4); refused before decoding")
    if (w, h) != (meta.width, meta.height):
        raise ImageLoadError(
            path, f"the {codec} codestream{which} is {w} x {h} pixels but the header says "
            f"{meta.width} x {meta.height} (damaged or crafted); refused before decoding")


def _too_complex() -> str:
    return (f"the DICOM header holds too many data elements (more than about "
            f"{DICOM_MAX_READS // 2} before the pixel data; a real image has a few thousand); "
            "refused")


def _first(v) -> float:
    """First value of a possibly multi-valued DS/IS element."""
    from pydicom.multival import MultiValue

    return float(v[0]) if isinstance(v, (MultiValue, list, tuple)) else float(v)


def _dicom_window(ds) -> tuple[float, float] | None:
    """Default display window in modality units: WindowCenter/Width (first pair), else the
    input range of the first VOI LUT (a linear stand-in for its exact curve)."""
    try:
        if "WindowCenter" in ds and "WindowWidth" in ds:
            c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
            if np.isfinite(c) and np.isfinite(w) and w > 0:
                return c, w
        seq = ds.get("VOILUTSequence")
        if seq:
            desc = seq[0].LUTDescriptor
            n = int(desc[0]) or 65536
            first = int(desc[1])
            if int(ds.get("PixelRepresentation", 0)) == 1 and first >= 32768:
                first -= 65536
            return first + n / 2.0, float(n)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        return None
    return None


def _functional_spacing(ds) -> Any:
    """PixelSpacing of an enhanced multi-frame object: in the shared functional groups (the
    same for every frame), else the first frame's own."""
    for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            v = ds.get(seq_kw)[0].PixelMeasuresSequence[0].get("PixelSpacing")
        except (AttributeError, TypeError, IndexError, KeyError):
            continue
        if v is not None:
            return v
    return None


def _dicom_spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    for kw, src in (("PixelSpacing", SPACING_PIXEL), ("ImagerPixelSpacing", SPACING_IMAGER),
                    ("", SPACING_PIXEL)):
        v = ds.get(kw) if kw else _functional_spacing(ds)
        if v is None:
            continue
        try:
            r, c = float(v[0]), float(v[1])
        except (TypeError, ValueError, IndexError):
            continue
        if r > 0 and c > 0 and np.isfinite(r) and np.isfinite(c):
            return (r, c), src
    return None, None


def _dicom_meta(path: Path, f: BinaryIO, size: int, frame: int | None = None) -> ImageMeta:
    """Header of a DICOM (of its frame ``frame``, 1-based, when given). pydicom converts
    element values when they are first used, so a damaged value (an unknown VR, text where a
    number belongs) surfaces here, as any of many exception types: each becomes an
    ImageLoadError naming the file."""
    ds, has_pixels = _dicom_header(path, f, size)
    try:
        return _dicom_meta_of(path, ds, has_pixels, frame)
    except ImageLoadError:
        raise
    except RecursionError:
        raise ImageLoadError(path, "corrupt DICOM header: sequences nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise ImageLoadError(path, f"corrupt DICOM header ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None


def _dicom_conversion(photometric: str, samples: int) -> str | None:
    """How a colour DICOM becomes grey, in words (None for a grey one). pydicom hands YBR as
    RGB (its own conversion for uncompressed / RLE data, the codec's for JPEG and JPEG 2000)
    and PALETTE COLOR as indices, which we map through the file's palette first."""
    if photometric == "PALETTE COLOR":
        return f"PALETTE COLOR -> RGB through the file's palette -> {GREY_FROM_RGB}"
    if photometric.startswith("YBR"):
        return f"{photometric} -> RGB (decoder) -> {GREY_FROM_RGB}"
    if samples >= 3 or photometric in ("RGB", "ARGB", "CMYK", "HSV"):
        return f"{photometric or 'colour'} -> {GREY_FROM_RGB}"
    return None


def _dicom_meta_of(path: Path, ds: Any, has_pixels: bool, frame: int | None) -> ImageMeta:
    if not has_pixels:
        what = str(ds.get("Modality", "") or "")
        sop = ds.get("SOPClassUID")
        sop_name = (getattr(sop, "name", None) or str(sop)) if sop else ""
        parts = ", ".join(p for p in (what, sop_name) if p)
        raise ImageLoadError(
            path, f"DICOM object without pixel data{f' ({parts})' if parts else ''}: not an image"
        )
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frame is not None and frame > max(frames, 1):
        raise ImageLoadError(path, f"there is no frame {frame}: the DICOM has {frames} "
                             f"frame{'s' if frames != 1 else ''}")
    if frame is None and frames > 1 and dicom_frames_mode() == FRAMES_REFUSED:
        raise ImageLoadError(
            path, f"multi-frame DICOM ({frames} frames) refused by the setting "
            f"{DICOM_FRAMES_KEY} = {FRAMES_REFUSED} ([{SETTINGS_SECTION}] in {settings_file()}, "
            f"or {DICOM_FRAMES_ENV}): set it to {FRAMES_AS_IMAGES!r} to add each frame as an "
            "image, or export the frame you want as a single-frame image")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageLoadError(path, "DICOM image without Rows/Columns") from None
    if rows <= 0 or cols <= 0:
        raise ImageLoadError(path, f"DICOM image size {cols}x{rows}")
    _check_pixels(path, cols, rows)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    spacing, src = _dicom_spacing(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        samples = 1
    meta = ImageMeta(
        path=path, width=cols, height=rows, bit_depth=bits, kind="dicom", spacing=spacing,
        spacing_source=src, window=_dicom_window(ds), photometric=photometric or None,
        frames=max(frames, 1), frame=frame,
        conversion=_dicom_conversion(photometric, samples),
    )
    if frame is None and frames > 1:  # the file as a whole is not one image
        raise MultiFrameDicom(path, frames, meta)
    return meta


def _load_dicom(path: Path, meta: ImageMeta, f: BinaryIO, size: int) -> XrayImage:
    ds = None
    # a deflated dataset may inflate to its header plus its pixels, never more
    cap = _HEADER_SLACK + meta.width * meta.height * _BYTES_PER_PIXEL_MAX
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds, _, _ = _read_dicom(path, f, size, header_only=False, inflate_cap=cap)
        if not any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
            hint = f" ({caught[0].message})" if caught else ""
            raise ImageLoadError(
                path, f"truncated or damaged DICOM: the pixel data is incomplete{hint}"
            )
        _check_codestream(path, meta, ds)  # a decoder allocates what the codestream says
        if meta.frame is not None and meta.frames > 1:  # pydicom decodes only that frame
            ds.pixel_array_options(index=meta.frame - 1)
        arr = ds.pixel_array
    except ImageLoadError:
        raise
    except _TooComplex:
        raise ImageLoadError(path, _too_complex()) from None
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to decode this DICOM image") from None
    except Exception as e:  # noqa: BLE001 - pydicom and its codecs raise many types
        try:
            tsx = ds.file_meta.get("TransferSyntaxUID") if ds is not None and ds.file_meta \
                else None
            name = getattr(tsx, "name", None) or str(tsx or "unknown transfer syntax")
        except Exception:  # noqa: BLE001 - the transfer syntax itself is damaged
            name = "damaged transfer syntax"
        raise ImageLoadError(
            path, f"cannot decode the DICOM pixel data ({name}): {type(e).__name__}: "
            f"{str(e)[:200]}") from None
    try:
        return _dicom_pixels(path, meta, ds, arr)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to decode this DICOM image") from None
    except Exception as e:  # noqa: BLE001 - a damaged value met by the LUT / inversion
        raise ImageLoadError(path, f"cannot convert the DICOM pixel data ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None


def _dicom_pixels(path: Path, meta: ImageMeta, ds: Any, arr: np.ndarray) -> XrayImage:
    """Grey float32 pixels from pydicom's array: palette to RGB, colour to grey (as
    ``meta.conversion`` says), modality LUT, MONOCHROME1."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if (meta.photometric or "") == "PALETTE COLOR" and arr.ndim == 2:
        arr = apply_color_lut(arr, ds)  # indices are not intensities
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and meta.conversion:  # YBR comes as RGB
        import cv2

        rgb = np.ascontiguousarray(arr[..., :3])
        if rgb.dtype not in (np.uint8, np.uint16):
            rgb = rgb.astype(np.float32)
        px = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    elif arr.ndim == 2:
        px = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    else:
        raise ImageLoadError(path, f"unexpected DICOM pixel array shape {arr.shape}")
    if px.shape != (meta.height, meta.width):
        raise ImageLoadError(
            path, f"DICOM pixel data is {px.shape[1]}x{px.shape[0]}, the header says "
            f"{meta.width}x{meta.height}"
        )
    if (meta.photometric or "").upper() == "MONOCHROME1":
        px = _invert_monochrome1(px, meta, ds)
    return XrayImage(meta=meta, pixels=np.ascontiguousarray(px, dtype=np.float32))


def _invert_monochrome1(px: np.ndarray, meta: ImageMeta, ds) -> np.ndarray:
    """MONOCHROME1 (minimum = white) to MONOCHROME2, after the VOI stage.

    With a window (c, w) we mirror around the window's own centre, p' = 2(c - 0.5) - p: the
    DICOM linear window formula then gives exactly 1 - f(p) with the *same* window, which is what
    a viewer shows for the MONOCHROME1 file. Without a window we mirror within the representable
    range (BitsStored through the modality LUT), so values stay in range and no image content
    decides the mapping.
    """
    if meta.window is not None:
        c, _ = meta.window
        return (np.float32(2.0 * (c - 0.5)) - px).astype(np.float32)
    bits = meta.bit_depth
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo_s, hi_s = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    icpt = float(ds.get("RescaleIntercept", 0) or 0)
    a, b = lo_s * slope + icpt, hi_s * slope + icpt
    return (np.float32(a + b) - px).astype(np.float32)


# --------------------------------------------------------------------------- public API


def _meta_from(path: Path, kind: str, f: BinaryIO, size: int,
               frame: int | None = None) -> ImageMeta:
    """Header of the open file ``f`` (see read_metadata); ``path`` names it in messages (a
    frame's name, ``file.dcm#3``, for frame ``frame``)."""
    try:
        f.seek(0)
        head = f.read(132)
        real = _sniff(head)  # the content decides: a renamed file is read as what it is
        if real is None:
            problem = _describe_garbage(head)
            # old DICOM files may lack the 128+4 byte preamble: let pydicom judge those
            if kind != "dicom" or not head or problem.endswith("contains text"):
                raise ImageLoadError(path, problem)
            real = "dicom"
        if real == "dicom":
            return _dicom_meta(path, f, size, frame)
        if frame is not None:
            raise ImageLoadError(path, f"a frame number (#{frame}) names a frame of a "
                                 f"multi-frame DICOM; this is a {real.upper()} file")
        w, h, bits, photometric = _RASTER_META[real](path, f, size)
    except OSError as e:
        raise ImageLoadError(path, _os_problem(e)) from None
    colour = photometric in ("rgb", "rgba", "colour", "palette")
    return ImageMeta(path=path, width=w, height=h, bit_depth=bits, kind=real,
                     photometric=photometric,
                     conversion=f"{photometric} -> {GREY_FROM_RGB}" if colour else None)


def read_metadata(path: str | Path) -> ImageMeta:
    """Header-only read (no pixel decode). Raises ImageLoadError naming file and problem;
    ``MultiFrameDicom`` (carrying the frame count) for a multi-frame DICOM named as a whole
    while frames are offered as images. ``file.dcm#3`` reads frame 3's header."""
    path = Path(path)
    file, frame = split_frame(path)
    kind = _kind_for(file)  # refuses unsupported suffixes before touching the file
    f, size = _open_image(file)
    with f:
        return _meta_from(path, kind, f, size, frame)


def load_image(path: str | Path) -> XrayImage:
    """Decode one image to an XrayImage. Raises ImageLoadError naming file and problem.

    Header and pixels come from one open file, so the checks made on the header (size, pixel
    limit) hold for the bytes that are decoded.
    """
    path = Path(path)
    file, frame = split_frame(path)
    kind = _kind_for(file)
    f, size = _open_image(file)
    with f:
        meta = _meta_from(path, kind, f, size, frame)  # refuses cut-short files cheaply
        if meta.kind == "dicom":
            return _load_dicom(path, meta, f, size)
        try:
            f.seek(0)
            data = f.read()
        except OSError as e:
            raise ImageLoadError(path, _os_problem(e)) from None
        except MemoryError:
            raise ImageLoadError(path, "not enough memory to read this file") from None
    import cv2

    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageLoadError(path, f"cannot decode the {meta.kind.upper()} data ({e})") from None
    del data
    if img is None:
        raise ImageLoadError(path, f"corrupt {meta.kind.upper()}: the image data cannot be decoded")
    if img.ndim == 3:
        ch = img.shape[2]
        if ch in (1, 2):  # grey (+ alpha)
            img = img[..., 0]
        elif ch in (3, 4):
            if img.dtype not in (np.uint8, np.uint16, np.float32):
                img = img.astype(np.float32)
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if ch == 4 else cv2.COLOR_BGR2GRAY)
        else:
            raise ImageLoadError(path, f"unsupported number of colour channels ({ch})")
    if img.shape != (meta.height, meta.width):
        raise ImageLoadError(
            path, f"decoded size {img.shape[1]}x{img.shape[0]} differs from the header's "
            f"{meta.width}x{meta.height}"
        )
    depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(img.dtype, 32)
    px = img.astype(np.float32)
    if meta.photometric == "MINISWHITE" and depth == 16:
        # TIFF "white is zero": OpenCV already inverts 8-bit MINISWHITE but hands 16-bit over
        # raw (checked by tests/test_images.py::test_tiff_miniswhite for both depths)
        px = np.float32(2**depth - 1) - px
    if depth != meta.bit_depth:
        meta = replace(meta, bit_depth=depth)
    return XrayImage(meta=meta, pixels=px)


_NAT = re.compile(r"(\d+)")


def _natural_key(p: Path) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.casefold()) for t in _NAT.split(p.name)]


def list_images(folder: str | Path) -> list[Path]:
    """Supported image files in ``folder`` (not recursive), natural order (img2 < img10).

    Hidden files (``.name``, e.g. macOS ``._x.png`` resource forks) are skipped; files without
    an extension or with another one (``.IMA``, ``.dc3``...) are included only when they carry
    the DICOM ``DICM`` preamble (132 bytes read: the folder scan stays cheap).
    """
    folder = Path(folder)
    if not folder.exists():
        raise LmkError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise LmkError(f"{folder}: not a folder")
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise LmkError(f"{folder}: cannot list the folder ({e.strerror or e})") from None
    out: list[Path] = []
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if not e.is_file():
                continue
        except OSError:
            continue
        p = Path(e.path)
        suf = p.suffix.lower()
        if suf in _RASTER_KIND or suf in (".dcm", ".dicom"):
            out.append(p)
        elif _has_dicm_preamble(p):  # ".IMA", no extension...: DICOM by its preamble
            out.append(p)
    out.sort(key=_natural_key)
    return out


def frame_hash(file_hash: str, frame: int) -> str:
    """The quick hash of frame ``frame`` of a file whose quick hash is ``file_hash``."""
    return hashlib.sha1(f"{file_hash}#{int(frame)}".encode()).hexdigest()


def quick_hash(path: str | Path) -> str:
    """sha1 of (size, first 64 KiB, last 64 KiB): cheap change detection, not a content proof.
    A frame (``file.dcm#3``) hashes as its file plus its number."""
    path, frame = split_frame(path)
    if frame is not None:
        return frame_hash(quick_hash(path), frame)
    chunk = 65536
    try:
        f, size = open_regular(path)
    except FileRefused as e:
        raise ImageLoadError(path, e.problem) from None
    except OSError as e:
        raise ImageLoadError(path, _os_problem(e)) from None
    try:
        with f:
            h = hashlib.sha1(str(size).encode())
            h.update(f.read(chunk))
            if size > chunk:
                f.seek(max(chunk, size - chunk))
                h.update(f.read(chunk))
    except OSError as e:
        raise ImageLoadError(path, _os_problem(e)) from None
    return h.hexdigest()


class ImageFolder:
    """A folder opened lazily: listing first, metadata on demand (or in bulk), pixels on demand
    through an LRU cache bounded by bytes. Problems are collected in ``faults``; a bad file never
    stops the rest of the folder. Thread-safe (the GUI may prefetch from a worker thread).
    """

    def __init__(self, folder: str | Path, cache_bytes: int = 512 * 1024 * 1024) -> None:
        self.folder = Path(folder)
        self.paths: list[Path] = list_images(self.folder)
        self.cache_bytes = int(cache_bytes)
        self.faults: list[tuple[Path, str]] = []
        self._fault_paths: set[Path] = set()
        self._meta: dict[int, ImageMeta] = {}
        self._cache: OrderedDict[int, XrayImage] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.paths)

    def _fault(self, e: ImageLoadError) -> None:
        with self._lock:
            if e.path not in self._fault_paths:
                self._fault_paths.add(e.path)
                self.faults.append((e.path, e.problem))

    def meta(self, i: int) -> ImageMeta:
        """Header of image i (cached). Raises ImageLoadError for that file (also recorded)."""
        with self._lock:
            m = self._meta.get(i)
        if m is not None:
            return m
        try:
            m = read_metadata(self.paths[i])
        except ImageLoadError as e:
            self._fault(e)
            raise
        with self._lock:
            self._meta[i] = m
        return m

    def read_all_metadata(
        self, progress: Callable[[int, int], None] | None = None
    ) -> list[ImageMeta | None]:
        """Headers of every file; None (and an entry in ``faults``) for unreadable ones."""
        out: list[ImageMeta | None] = []
        n = len(self.paths)
        for i in range(n):
            try:
                out.append(self.meta(i))
            except ImageLoadError:
                out.append(None)
            if progress is not None:
                progress(i + 1, n)
        return out

    def ok_indices(self) -> list[int]:
        """Indices whose metadata reads cleanly (reads any not yet read)."""
        return [i for i, m in enumerate(self.read_all_metadata()) if m is not None]

    def image(self, i: int) -> XrayImage:
        """Decoded image i, from the cache when present. Raises ImageLoadError (recorded)."""
        with self._lock:
            img = self._cache.get(i)
            if img is not None:
                self._cache.move_to_end(i)
                return img
        try:
            img = load_image(self.paths[i])
        except ImageLoadError as e:
            self._fault(e)
            raise
        with self._lock:
            self._meta[i] = img.meta
            self._put(i, img)
        return img

    def _put(self, i: int, img: XrayImage) -> None:
        size = img.pixels.nbytes
        if size > self.cache_bytes:  # bigger than the whole budget: hand it out, keep nothing
            return
        old = self._cache.pop(i, None)
        if old is not None:
            self._cached_bytes -= old.pixels.nbytes
        self._cache[i] = img
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes and self._cache:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.pixels.nbytes

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def cached_indices(self) -> list[int]:
        """Cached images, least recently used first."""
        with self._lock:
            return list(self._cache)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    def prefetch(self, indices: Iterable[int]) -> None:
        """Decode into the cache (e.g. the neighbours of the shown image); faults recorded."""
        for i in indices:
            if 0 <= i < len(self.paths):
                try:
                    self.image(i)
                except ImageLoadError:
                    pass
