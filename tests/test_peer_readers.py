"""Every X-ray a peer library reads, lmk_studio reads (issue 17).

- pydicom's own test files (``pydicom/data/test_files``, shipped in the wheel, 176 files, 3 MB,
  about 5 s here): every object pydicom decodes to one 2-D image (grey or colour) loads with
  pydicom's pixel values run through the project's rules (modality LUT, MONOCHROME1 inversion,
  palette through its LUT, colour to grey by BT.601 luma), and so does each frame of a
  multi-frame object (named ``file.dcm#k``); every other file is refused with an
  ImageLoadError that names it and says why. No traceback, each file under 10 s.
- Images that Pillow and OpenCV write in our formats (PNG 8/16-bit, TIFF 8/16-bit and float,
  JPEG, BMP; grey and colour) load with the values those libraries read back.

The references are computed here from the peer library's own output, not through the
project's loader, so a decode that differs (wrong frame, wrong byte order, palette indices
taken as intensities, a dual-personality file refused) shows as a failure.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from lmk_studio.core.errors import ImageLoadError, display_path
from lmk_studio.core.images import (
    MultiFrameDicom,
    XrayImage,
    frame_path,
    load_image,
    read_metadata,
)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
LUMA = np.array([0.299, 0.587, 0.114])
MAX_S = 10.0


def _corpus() -> list[Path]:
    if not PYDICOM_FILES.is_dir():
        return []
    return sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())


def _reference(path: Path) -> tuple[object, list[np.ndarray]] | str:
    """(dataset, one array per frame) as pydicom decodes the file, or why pydicom cannot."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            arr = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - any failure means "pydicom does not decode it"
            return f"{type(e).__name__}: {e}"
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return ds, [arr[k] for k in range(frames)]
    if arr.ndim == 2 or (arr.ndim == 3 and samples > 1):
        return ds, [arr]
    return f"pixel array of shape {arr.shape}"


def _by_our_rules(arr: np.ndarray, ds, window: tuple[float, float] | None) -> np.ndarray:
    """pydicom's array through the project's documented rules, computed independently."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photo = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photo == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return arr[..., :3].astype(np.float64) @ LUMA
    px = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if photo == "MONOCHROME1":  # mirrored around the window's centre, else in the bit range
        if window is not None:
            return 2.0 * (window[0] - 0.5) - px
        bits = int(ds.BitsStored)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else \
            (0, 2**bits - 1)
        slope, icpt = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        return (lo + hi) * slope + 2 * icpt - px
    return px


def _same(img: XrayImage, expected: np.ndarray, colour: bool) -> None:
    """Raw values equal (colour: within OpenCV's fixed-point rounding), and the engine's [0, 1]
    view equal after the project's windowing rules."""
    assert img.pixels.shape == expected.shape
    if colour:  # OpenCV's fixed-point luma: within 0.5 (8-bit) / 1.04 (16-bit) grey levels
        np.testing.assert_allclose(img.pixels, expected, rtol=1e-6, atol=1.5)
    else:
        np.testing.assert_allclose(img.pixels, expected, rtol=1e-6, atol=1e-3)
    ref = XrayImage(meta=img.meta, pixels=expected.astype(np.float32))
    lo, hi = ref.default_range()
    # a raw difference of one grey level (colour rounding) moves the view by 1 / (hi - lo)
    np.testing.assert_allclose(img.normalized(), ref.normalized(),
                               atol=max(2.0 / (hi - lo), 1e-6) if colour else 1e-5)


def _refused(path: Path) -> str:
    with pytest.raises(ImageLoadError) as e:
        read_metadata(path)
        load_image(path)
    msg = str(e.value)
    assert msg.startswith(f"{display_path(path)}: ") and len(e.value.problem) > 10, msg
    return e.value.problem


@pytest.mark.skipif(not _corpus(), reason=f"pydicom's test files are not in this install "
                    f"({PYDICOM_FILES})")
@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.relative_to(PYDICOM_FILES).as_posix())
def test_pydicom_test_file(path: Path) -> None:
    t0 = time.perf_counter()
    ref = _reference(path)
    if isinstance(ref, str):  # pydicom cannot decode it: refused by name, with the reason
        _refused(path)
    else:
        ds, frames = ref
        if len(frames) == 1:
            img = load_image(path)
            _same(img, _by_our_rules(frames[0], ds, img.meta.window), img.meta.conversion
                  is not None)
        else:
            with pytest.raises(MultiFrameDicom) as e:
                read_metadata(path)
            assert e.value.frames == len(frames)
            for k, arr in enumerate(frames, start=1):
                img = load_image(frame_path(path, k))
                assert img.meta.frame == k
                _same(img, _by_our_rules(arr, ds, img.meta.window),
                      img.meta.conversion is not None)
    assert time.perf_counter() - t0 < MAX_S


# ---- Pillow and OpenCV ---------------------------------------------------------------------
def _grey(h: int = 48, w: int = 64, top: float = 255.0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x * 3 + y * 5) / (3 * (w - 1) + 5 * (h - 1)) * top


def _colour(h: int = 48, w: int = 64) -> np.ndarray:
    g = _grey(h, w)
    return np.stack([g, g[::-1], 255 - g], axis=-1).astype(np.uint8)  # RGB


def _pillow_cases() -> list[tuple[str, str, object]]:
    """(file name, the mode Pillow gives the array, array) per format/depth it writes."""
    return [
        ("pil_grey8.png", "L", _grey().astype(np.uint8)),
        ("pil_grey16.png", "I;16", _grey(top=60000).astype(np.uint16)),
        ("pil_rgb8.png", "RGB", _colour()),
        ("pil_grey8.tif", "L", _grey().astype(np.uint8)),
        ("pil_grey16.tif", "I;16", _grey(top=60000).astype(np.uint16)),
        ("pil_float.tif", "F", (_grey(top=3.0) - 1.0).astype(np.float32)),
        ("pil_rgb8.tif", "RGB", _colour()),
        ("pil_grey.jpg", "L", _grey().astype(np.uint8)),
        ("pil_rgb.jpg", "RGB", _colour()),
        ("pil_grey.bmp", "L", _grey().astype(np.uint8)),
        ("pil_rgb.bmp", "RGB", _colour()),
    ]


@pytest.mark.parametrize("name,mode,arr", _pillow_cases(), ids=[c[0] for c in _pillow_cases()])
def test_images_written_by_pillow(tmp_path: Path, name: str, mode: str, arr) -> None:
    from PIL import Image

    p = tmp_path / name
    im = Image.fromarray(arr)
    assert im.mode == mode
    im.save(p)
    back = np.asarray(Image.open(p))  # what Pillow reads from its own file
    t0 = time.perf_counter()
    img = load_image(p)
    assert time.perf_counter() - t0 < MAX_S
    colour = back.ndim == 3
    expected = back[..., :3].astype(np.float64) @ LUMA if colour else back.astype(np.float64)
    jpeg = name.endswith(".jpg")  # two libjpeg builds may round the IDCT differently
    if jpeg:
        assert np.abs(img.pixels - expected).max() <= 2.0
    else:
        _same(img, expected, colour)
    assert (img.meta.conversion is not None) == colour
    assert img.meta.bit_depth == {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(
        back.dtype, 32)


def _opencv_cases() -> list[tuple[str, np.ndarray]]:
    bgr = _colour()[..., ::-1].copy()
    return [
        ("cv_grey8.png", _grey().astype(np.uint8)),
        ("cv_grey16.png", _grey(top=60000).astype(np.uint16)),
        ("cv_bgr16.png", (bgr.astype(np.uint16) * 250)),
        ("cv_grey8.tif", _grey().astype(np.uint8)),
        ("cv_grey16.tif", _grey(top=60000).astype(np.uint16)),
        ("cv_float.tif", (_grey(top=3.0) - 1.0).astype(np.float32)),
        ("cv_bgr8.tif", bgr),
        ("cv_grey.jpg", _grey().astype(np.uint8)),
        ("cv_bgr.jpg", bgr),
        ("cv_grey.bmp", _grey().astype(np.uint8)),
        ("cv_bgr.bmp", bgr),
    ]


@pytest.mark.parametrize("name,arr", _opencv_cases(), ids=[c[0] for c in _opencv_cases()])
def test_images_written_by_opencv(tmp_path: Path, name: str, arr: np.ndarray) -> None:
    p = tmp_path / name
    ok, buf = cv2.imencode(p.suffix, arr)
    assert ok
    p.write_bytes(buf.tobytes())
    back = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)  # what OpenCV reads from its own file
    img = load_image(p)
    colour = back.ndim == 3
    expected = back[..., 2::-1].astype(np.float64) @ LUMA if colour else back.astype(np.float64)
    _same(img, expected, colour)
    # and Pillow reads the same pixels from OpenCV's file where it knows the format
    if not name.endswith((".jpg", "float.tif", "16.png")):
        from PIL import Image

        pil = np.asarray(Image.open(p))
        ref = pil[..., :3].astype(np.float64) @ LUMA if pil.ndim == 3 else pil.astype(float)
        np.testing.assert_allclose(img.pixels, ref, atol=1.0)
