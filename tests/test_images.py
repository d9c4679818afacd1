"""Raster image loading (PNG/JPEG/BMP/TIFF), bad files, folders, cache. Tiny crafted files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lmk_studio.core.errors import ImageLoadError, LmkError
from lmk_studio.core.images import (
    SUPPORTED_SUFFIXES,
    ImageFolder,
    list_images,
    load_image,
    quick_hash,
    read_metadata,
)


def _write(path: Path, img: np.ndarray, ext: str | None = None) -> Path:
    """Encode with OpenCV into memory and write with Python (unicode-safe on every OS)."""
    ok, buf = cv2.imencode(ext or path.suffix, img)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


def _ramp(h: int = 40, w: int = 56, dtype=np.uint8, top: int = 255) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x + 2 * y) * top // (w - 1 + 2 * (h - 1))).astype(dtype)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".jpg"])
def test_grey_8bit_formats_round_trip(tmp_path: Path, ext: str) -> None:
    img = _ramp()
    p = _write(tmp_path / f"a{ext}", img)
    m = read_metadata(p)
    assert (m.width, m.height, m.bit_depth) == (56, 40, 8)
    assert m.kind == {".png": "png", ".bmp": "bmp", ".tif": "tiff", ".jpg": "jpeg"}[ext]
    assert m.spacing is None and m.spacing_source is None and m.window is None
    x = load_image(p)
    assert x.pixels.dtype == np.float32 and x.pixels.shape == (40, 56)
    tol = 3.0 if ext == ".jpg" else 0.0  # JPEG is lossy
    assert np.abs(x.pixels - img).max() <= tol
    n = x.normalized()
    assert n.dtype == np.float32 and 0.0 <= n.min() and n.max() <= 1.0
    np.testing.assert_allclose(n, x.pixels / 255.0, atol=1e-6)  # 8-bit: plain /255
    assert np.abs(x.to_uint8().astype(int) - x.pixels.astype(int)).max() <= 0


def test_colour_is_converted_to_grey(tmp_path: Path) -> None:
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 100, 200
    x = load_image(_write(tmp_path / "c.png", bgr))
    want = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert x.pixels.shape == (20, 30)
    np.testing.assert_array_equal(x.pixels, want.astype(np.float32))
    bgra = np.dstack([bgr, np.full((20, 30), 128, np.uint8)])
    np.testing.assert_array_equal(load_image(_write(tmp_path / "c4.png", bgra)).pixels, want)


def test_16bit_tiff_keeps_values_above_255(tmp_path: Path) -> None:
    img = _ramp(dtype=np.uint16, top=40000) + 1000
    p = _write(tmp_path / "deep.tif", img)
    m = read_metadata(p)
    assert m.bit_depth == 16 and m.kind == "tiff"
    x = load_image(p)
    np.testing.assert_array_equal(x.pixels, img.astype(np.float32))
    assert x.pixels.max() > 255
    lo, hi = x.default_range()  # robust percentiles, not 0..65535
    assert img.min() <= lo < np.percentile(img, 1) and np.percentile(img, 99) < hi <= img.max()
    n = x.normalized()
    assert n.min() == 0.0 and n.max() == 1.0 and 0.3 < float(np.median(n)) < 0.7
    u8 = x.to_uint8(window=(1000.0 + 20000.0, 2.0))  # narrow window: a hard threshold
    assert set(np.unique(u8)) <= {0, 128, 255}


def test_16bit_png_and_big_endian_tiff(tmp_path: Path) -> None:
    img = _ramp(dtype=np.uint16, top=60000)
    x = load_image(_write(tmp_path / "d.png", img))
    np.testing.assert_array_equal(x.pixels, img)
    assert x.meta.bit_depth == 16
    # hand-built big-endian TIFF ("MM"), 16-bit, one strip: our IFD parser in the other byte order
    h, w = img.shape
    blob = _tiff_bytes(img, photometric=1, bits=16, bo=">")
    p = tmp_path / "be.tiff"
    p.write_bytes(blob)
    m = read_metadata(p)
    assert (m.width, m.height, m.bit_depth) == (w, h, 16)
    np.testing.assert_array_equal(load_image(p).pixels, img)
    p.write_bytes(blob[:-100])
    with pytest.raises(ImageLoadError, match="truncated TIFF"):
        read_metadata(p)


def _tiff_bytes(img: np.ndarray, photometric: int, bits: int, bo: str = "<") -> bytes:
    """A minimal uncompressed one-strip TIFF, built by hand (byte order and photometric)."""
    import struct

    h, w = img.shape
    data = img.astype(f"{bo}u2" if bits == 16 else "u1").tobytes()
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, bits), (259, 3, 1, 1),
               (262, 3, 1, photometric), (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1),
               (279, 4, 1, len(data))]
    ifd = struct.pack(bo + "H", len(entries))
    for tag, typ, cnt, val in entries:
        ifd += struct.pack(bo + "HHI", tag, typ, cnt) + (
            struct.pack(bo + "HH", val, 0) if typ == 3 else struct.pack(bo + "I", val)
        )
    magic = b"II*\x00" if bo == "<" else b"MM\x00*"
    return magic + struct.pack(bo + "I", 8) + ifd + b"\x00\x00\x00\x00" + data


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_miniswhite_is_shown_with_dense_bright(tmp_path: Path, bits: int) -> None:
    top = 255 if bits == 8 else 65535
    img = _ramp(dtype=np.uint16, top=200 if bits == 8 else 60000)
    p = tmp_path / "white_is_zero.tif"
    p.write_bytes(_tiff_bytes(img, photometric=0, bits=bits))
    assert read_metadata(p).photometric == "MINISWHITE"
    np.testing.assert_array_equal(load_image(p).pixels, (top - img.astype(np.int64)))


def test_truncated_png_is_refused_naming_the_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "cut.png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="truncated PNG") as ei:
        load_image(p)
    assert ei.value.path == p and "cut.png" in str(ei.value)
    with pytest.raises(ImageLoadError, match="truncated PNG"):
        read_metadata(p)


def test_corrupt_png_body_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.png", np.random.default_rng(1).integers(0, 255, (64, 64), np.uint8))
    b = bytearray(p.read_bytes())
    b[60:200] = b"\x00" * 140  # damage the compressed data, keep IHDR and IEND
    p.write_bytes(bytes(b))
    with pytest.raises(ImageLoadError, match="bad.png.*corrupt PNG"):
        load_image(p)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path / "cut.jpg", _ramp(64, 64))
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(ImageLoadError, match="truncated JPEG"):
        load_image(p)


def test_text_file_named_png_and_empty_file(tmp_path: Path) -> None:
    t = tmp_path / "notes.png"
    t.write_text("patient list\nnot an image\n", encoding="utf-8")
    with pytest.raises(ImageLoadError, match=r"notes\.png: not an image: the file contains text"):
        load_image(t)
    z = tmp_path / "zero.jpg"
    z.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"zero\.jpg: the file is empty"):
        read_metadata(z)
    g = tmp_path / "junk.tif"
    g.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageLoadError, match="unknown file signature"):
        load_image(g)


def test_missing_file_and_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "gone.png")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ImageLoadError, match="unsupported file type '.gif'"):
        read_metadata(tmp_path / "x.gif")


def test_renamed_jpeg_with_png_suffix_is_read_as_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "really_jpeg.png"
    _write(p, _ramp(), ext=".jpg")
    assert read_metadata(p).kind == "jpeg"
    assert load_image(p).pixels.shape == (40, 56)


def test_jpeg_with_trailing_data_is_accepted(tmp_path: Path) -> None:
    p = _write(tmp_path / "trailer.jpg", _ramp())
    p.write_bytes(p.read_bytes() + b"\x00" * 10_000)  # some devices append data after EOI
    assert read_metadata(p).width == 56
    assert load_image(p).pixels.shape == (40, 56)


def test_png_named_dcm_is_read_as_png(tmp_path: Path) -> None:
    p = _write(tmp_path / "misnamed.dcm", _ramp(), ext=".png")
    assert read_metadata(p).kind == "png"
    np.testing.assert_array_equal(load_image(p).pixels, _ramp())


def test_unicode_path(tmp_path: Path) -> None:
    p = _write(tmp_path / "röntgen_画像" / "ïmg.png", _ramp())
    assert read_metadata(p).width == 56
    np.testing.assert_array_equal(load_image(p).pixels, _ramp())
    assert list_images(p.parent) == [p]
    assert len(quick_hash(p)) == 40


def test_empty_folder_and_missing_folder(tmp_path: Path) -> None:
    assert list_images(tmp_path) == []
    f = ImageFolder(tmp_path)
    assert len(f) == 0 and f.read_all_metadata() == [] and f.faults == []
    with pytest.raises(LmkError, match="folder not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(LmkError, match="not a folder"):
        ImageFolder(tmp_path / "file.png")


def test_list_images_filters_and_natural_order(tmp_path: Path) -> None:
    for n in ("img10.png", "img2.PNG", "img1.jpg", "a.dcm", "._img3.png", "readme.txt",
              "noext", "scan.TIFF"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.dcm", "img1.jpg", "img2.PNG", "img10.png", "scan.TIFF"]
    assert ".png" in SUPPORTED_SUFFIXES and "" in SUPPORTED_SUFFIXES


def test_quick_hash_notices_changes(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(2).integers(0, 255, 300_000, np.uint8).tobytes())
    p.write_bytes(bytes(data))
    h0 = quick_hash(p)
    assert quick_hash(p) == h0
    data[-5] ^= 0xFF  # last 64 KiB
    p.write_bytes(bytes(data))
    h1 = quick_hash(p)
    assert h1 != h0
    p.write_bytes(bytes(data) + b"\x00")  # size
    assert quick_hash(p) not in (h0, h1)


def test_folder_collects_faults_and_keeps_going(tmp_path: Path) -> None:
    for i in range(4):
        _write(tmp_path / f"ok{i}.png", _ramp() + i)
    (tmp_path / "text.png").write_text("hello", encoding="utf-8")
    cut = _write(tmp_path / "cut.png", np.random.default_rng(3).integers(0, 255, (64, 64),
                                                                          np.uint8))
    cut.write_bytes(cut.read_bytes()[:100])
    f = ImageFolder(tmp_path)
    metas = f.read_all_metadata()
    assert len(metas) == 6 and sum(m is None for m in metas) == 2
    assert sorted(p.name for p, _ in f.faults) == ["cut.png", "text.png"]
    assert all(problem for _, problem in f.faults)
    assert [f.paths[i].name for i in f.ok_indices()] == [f"ok{i}.png" for i in range(4)]
    bad = next(i for i, m in enumerate(metas) if m is None)
    with pytest.raises(ImageLoadError):
        f.image(bad)
    assert len(f.faults) == 2  # not recorded twice


def test_lru_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    for i in range(5):
        _write(tmp_path / f"{i}.png", _ramp(40, 50) + i)
    one = 40 * 50 * 4  # float32
    f = ImageFolder(tmp_path, cache_bytes=2 * one + 10)
    a = f.image(0)
    assert f.image(0) is a  # cached
    f.image(1)
    f.image(0)  # 0 becomes most recent
    f.image(2)  # evicts 1
    assert f.cached_indices() == [0, 2] and f.cached_bytes == 2 * one
    assert f.image(1) is not None and f.cached_indices() == [2, 1]
    tiny = ImageFolder(tmp_path, cache_bytes=one - 1)  # larger than budget: served, not kept
    assert tiny.image(3).pixels.shape == (40, 50) and tiny.cached_bytes == 0
    f.prefetch([3, 4, 99])
    assert f.cached_indices() == [3, 4]
    f.clear_cache()
    assert f.cached_bytes == 0 and f.cached_indices() == []


def test_hamedan_real_file(hamedan: Path) -> None:
    p = hamedan / "images" / "001.png"
    m = read_metadata(p)
    assert (m.width, m.height, m.bit_depth, m.kind) == (1340, 1671, 8, "png")
    x = load_image(p)
    assert x.pixels.shape == (1671, 1340) and x.pixels.max() <= 255
    n = x.normalized()
    assert 0.0 <= n.min() < 0.2 and n.max() == 1.0


# ---- bounded work for any input (issue 13, item 4) -------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_claiming(w: int, h: int, idat: bytes = b"", length: int | None = None) -> bytes:
    """A tiny PNG whose header claims w x h; ``length`` overrides the IDAT chunk's length."""
    import struct
    import zlib

    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    data = idat or zlib.compress(b"\0" * (w + 1))
    body = _png_chunk(b"IDAT", data)
    if length is not None:
        body = struct.pack(">I", length) + body[4:]
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + _png_chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_claiming(20000, 20000))  # a few hundred bytes that would decode to 400 MP
    assert p.stat().st_size < 10_000
    for f in (read_metadata, load_image):
        with pytest.raises(ImageLoadError, match=r"bomb\.png: 20000 x 20000 pixels .*"
                                                 r"LMK_STUDIO_MAX_PIXELS"):
            f(p)
    monkeypatch.setenv("LMK_STUDIO_MAX_PIXELS", "500000000")  # the setting raises the limit
    assert read_metadata(p).width == 20000


def test_pixel_limit_setting_is_checked(tmp_path: Path, monkeypatch) -> None:
    p = _write(tmp_path / "a.png", _ramp())  # 56 x 40
    monkeypatch.setenv("LMK_STUDIO_MAX_PIXELS", "1000")
    with pytest.raises(ImageLoadError, match="limit of 0.001 megapixels"):
        read_metadata(p)
    monkeypatch.setenv("LMK_STUDIO_MAX_PIXELS", "lots")
    with pytest.raises(LmkError, match="LMK_STUDIO_MAX_PIXELS='lots'"):
        read_metadata(p)


def test_file_larger_than_any_image_within_the_limit_is_refused_unread(tmp_path, monkeypatch):
    import lmk_studio.core.images as images

    p = _write(tmp_path / "a.png", np.random.default_rng(0).integers(0, 255, (40, 56), np.uint8))
    monkeypatch.setattr(images, "_HEADER_SLACK", 0)
    monkeypatch.setenv("LMK_STUDIO_MAX_PIXELS", "100")  # 800 bytes at most
    with pytest.raises(ImageLoadError, match="refused unread"):
        read_metadata(p)


def test_png_chunk_length_past_the_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.png"
    p.write_bytes(_png_claiming(10, 10, length=2**31))
    with pytest.raises(ImageLoadError, match="more than PNG allows"):
        load_image(p)
    p.write_bytes(_png_claiming(10, 10, length=2**31 - 1))
    with pytest.raises(ImageLoadError, match="declares 2147483647 bytes"):
        load_image(p)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this OS")
def test_fifo_named_like_an_image_never_blocks(tmp_path: Path) -> None:
    import os
    import time

    for name in ("x.png", "y.dcm", "noext"):
        os.mkfifo(tmp_path / name)
    t0 = time.monotonic()
    for name in ("x.png", "y.dcm"):
        for f in (read_metadata, load_image, quick_hash):
            with pytest.raises(ImageLoadError, match="FIFO"):
                f(tmp_path / name)
    assert list_images(tmp_path) == []
    assert time.monotonic() - t0 < 5.0


def test_folder_scan_never_decodes_pixels(tmp_path: Path, monkeypatch) -> None:
    """`new` reads headers only: decoding is made to fail, the project is still created."""
    import pydicom

    from lmk_studio.core.store import Project
    from lmk_studio.core.templates import LandmarkDef, Template

    _write(tmp_path / "imgs" / "a.png", _ramp())
    _write(tmp_path / "imgs" / "b.jpg", _ramp())
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(64)
    ds.save_as(tmp_path / "imgs" / "c.dcm", enforce_file_format=True)

    def boom(*a, **k):
        raise AssertionError("pixel data decoded during a folder scan")

    monkeypatch.setattr(cv2, "imdecode", boom)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    with Project.create(tmp_path / "p.lmk", Template("t", [LandmarkDef("a")]),
                        tmp_path / "imgs") as p:
        assert len(p.images()) == 3 and p.last_faults == []


def test_tiff_tag_with_no_values_is_refused_not_a_traceback(tmp_path: Path) -> None:
    """Found by tests/test_fuzz_inputs.py (seed 13): an empty ImageWidth tag raised IndexError."""
    import struct

    data = bytearray(_write(tmp_path / "a.tif", _ramp()).read_bytes())
    assert data[:2] == b"II"
    ifd = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[ifd:ifd + 2])[0]
    for k in range(n):
        e = ifd + 2 + 12 * k
        if struct.unpack("<H", data[e:e + 2])[0] == 256:
            data[e + 4:e + 8] = struct.pack("<I", 0)
    (tmp_path / "a.tif").write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match=r"a\.tif: corrupt TIFF"):
        read_metadata(tmp_path / "a.tif")


def test_pixel_limit_and_frames_are_user_settings_read_by_core(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Issue 13 item 4: the limit is a setting of the app (gui.settings writes the INI file)
    that core reads itself, so the CLI and job processes obey it; the environment variable
    wins for one run; the refusal says where to raise it."""
    from lmk_studio.core.images import dicom_frames_mode, max_pixels, settings_file
    from lmk_studio.gui import settings as gs

    monkeypatch.delenv("LMK_STUDIO_MAX_PIXELS", raising=False)
    monkeypatch.delenv("LMK_STUDIO_DICOM_FRAMES", raising=False)
    assert gs.settings_path() == settings_file()
    p = _write(tmp_path / "a.png", _ramp())  # 56 x 40 = 2240 pixels
    assert max_pixels() == 64_000_000 and gs.max_pixels_setting() is None
    gs.set_max_pixels_setting(2000)
    assert max_pixels() == 2000 and gs.max_pixels_setting() == 2000
    with pytest.raises(ImageLoadError, match=r"a\.png: 56 x 40 pixels .* limit of 0\.002 "
                                             r"megapixels.*max_pixels = N under \[images\] in "
                                             r".*lmk_studio\.ini.*LMK_STUDIO_MAX_PIXELS=N"):
        read_metadata(p)
    monkeypatch.setenv("LMK_STUDIO_MAX_PIXELS", "3000")  # the environment wins for a run
    assert read_metadata(p).width == 56
    monkeypatch.delenv("LMK_STUDIO_MAX_PIXELS")
    gs.set_max_pixels_setting(None)
    assert max_pixels() == 64_000_000
    assert dicom_frames_mode() == gs.dicom_frames_setting() == "images"
    gs.set_dicom_frames_setting("refuse")
    assert dicom_frames_mode() == "refuse"
    with pytest.raises(ValueError):
        gs.set_dicom_frames_setting("maybe")
    settings_file().write_text("[images]\nmax_pixels=lots\n", encoding="utf-8")
    with pytest.raises(LmkError, match=r"lmk_studio\.ini: \[images\] max_pixels = 'lots'"):
        read_metadata(p)
