"""DICOM loading: modality LUT, windows, MONOCHROME1, spacing sources, compressed syntaxes,
refusals (multi-frame, no pixel data, truncated, not DICOM). Files crafted with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from lmk_studio.core.errors import ImageLoadError, LmkError
from lmk_studio.core.images import (
    SPACING_IMAGER,
    SPACING_PIXEL,
    ImageFolder,
    MultiFrameDicom,
    codestream_size,
    frame_path,
    list_images,
    load_image,
    quick_hash,
    read_metadata,
)

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _ramp(h: int = 24, w: int = 32, top: int = 4000) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x + 3 * y) * top // (w - 1 + 3 * (h - 1))).astype(np.uint16)


def make_dicom(
    path: Path,
    arr: np.ndarray | None,
    tsx=ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    signed: bool = False,
    frames: int = 1,
    **attrs,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE if arr is not None else "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsx
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if arr is not None else "SR"
    ds.PatientName = "Test^Patient"
    if arr is not None:
        ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
        ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 8 if arr.dtype == np.uint8 else 16
        ds.BitsStored = 8 if arr.dtype == np.uint8 else bits
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if photometric == "RGB":
            ds.PlanarConfiguration = 0
            ds.Rows, ds.Columns = arr.shape[0], arr.shape[1]
        if frames > 1:
            ds.NumberOfFrames = frames
        big = tsx == ExplicitVRBigEndian
        dt = arr.dtype.newbyteorder(">") if big else arr.dtype
        ds.PixelData = arr.astype(dt).tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_basic_dicom_with_pixel_spacing(tmp_path: Path) -> None:
    arr = _ramp()
    p = make_dicom(tmp_path / "a.dcm", arr, PixelSpacing=[0.1, 0.12],
                   ImagerPixelSpacing=[0.15, 0.15])
    m = read_metadata(p)
    assert (m.width, m.height, m.bit_depth, m.kind) == (32, 24, 12, "dicom")
    assert m.spacing == (0.1, 0.12) and m.spacing_source == SPACING_PIXEL
    assert m.window is None and m.photometric == "MONOCHROME2"
    x = load_image(p)
    np.testing.assert_array_equal(x.pixels, arr.astype(np.float32))
    lo, hi = x.default_range()  # no window: robust percentiles of the data
    assert 0 <= lo < 200 and 3800 < hi <= 4000


def test_spacing_sources(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "det.dcm", _ramp(), ImagerPixelSpacing=[0.139, 0.139])
    m = read_metadata(p)
    assert m.spacing == (0.139, 0.139) and m.spacing_source == SPACING_IMAGER
    assert "at detector" in m.spacing_source
    m0 = read_metadata(make_dicom(tmp_path / "none.dcm", _ramp()))
    assert m0.spacing is None and m0.spacing_source is None
    bad = read_metadata(make_dicom(tmp_path / "zero.dcm", _ramp(), PixelSpacing=[0, 0],
                                   ImagerPixelSpacing=[0.2, 0.2]))
    assert bad.spacing == (0.2, 0.2) and bad.spacing_source == SPACING_IMAGER


def test_rescale_slope_intercept_applied(tmp_path: Path) -> None:
    arr = _ramp()
    p = make_dicom(tmp_path / "r.dcm", arr, RescaleSlope="2", RescaleIntercept="-1024",
                   RescaleType="US")
    x = load_image(p)
    np.testing.assert_allclose(x.pixels, arr.astype(np.float32) * 2 - 1024)
    assert x.pixels.min() == -1024.0


def test_signed_pixels_with_window(tmp_path: Path) -> None:
    arr = (_ramp().astype(np.int32) - 2000).astype(np.int16)
    p = make_dicom(tmp_path / "s.dcm", arr, signed=True, bits=16, RescaleSlope="1",
                   RescaleIntercept="0", WindowCenter="0", WindowWidth="1000")
    x = load_image(p)
    np.testing.assert_array_equal(x.pixels, arr.astype(np.float32))
    assert x.meta.window == (0.0, 1000.0)
    n = x.normalized()
    # DICOM linear window: (x - (c - 0.5)) / (w - 1) + 0.5, clipped
    np.testing.assert_allclose(n, np.clip((arr + 0.5) / 999.0 + 0.5, 0, 1), atol=1e-5)
    assert x.to_uint8()[arr < -600].max() == 0 and x.to_uint8()[arr > 600].min() == 255


def test_window_multi_valued_and_voi_lut(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "w.dcm", _ramp(), WindowCenter=["2000", "1000"],
                   WindowWidth=["4000", "500"])
    assert read_metadata(p).window == (2000.0, 4000.0)
    voi = Dataset()
    voi.LUTDescriptor = [1024, 512, 16]
    voi.add_new(0x00283006, "US", list(range(0, 65536, 64)))
    q = make_dicom(tmp_path / "voi.dcm", _ramp(), VOILUTSequence=[voi])
    assert read_metadata(q).window == (512 + 512.0, 1024.0)


def test_monochrome1_is_inverted_relative_to_the_window(tmp_path: Path) -> None:
    arr = _ramp()
    win = {"WindowCenter": "1500", "WindowWidth": "2000"}
    m2 = load_image(make_dicom(tmp_path / "m2.dcm", arr, **win))
    m1 = load_image(make_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1", **win))
    assert m1.meta.photometric == "MONOCHROME1" and m1.meta.window == m2.meta.window
    # what a viewer shows for MONOCHROME1 = the inverse of the same data shown as MONOCHROME2
    np.testing.assert_allclose(m1.normalized(), 1.0 - m2.normalized(), atol=1e-5)
    d = np.abs(m1.to_uint8().astype(int) - (255 - m2.to_uint8().astype(int)))
    assert d.max() <= 1
    # the top-left pixel has the lowest stored value: black in MONOCHROME2, white in MONOCHROME1
    assert m1.to_uint8()[0, 0] == 255 and m2.to_uint8()[0, 0] == 0


def test_monochrome1_without_window_mirrors_in_bit_range(tmp_path: Path) -> None:
    arr = _ramp()
    x = load_image(make_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1", bits=12))
    np.testing.assert_array_equal(x.pixels, 4095.0 - arr.astype(np.float32))


def _cine(tmp_path: Path, frames: int = 3) -> tuple[Path, np.ndarray]:
    arr = np.stack([_ramp(top=3000) + 300 * k for k in range(frames)]).astype(np.uint16)
    return make_dicom(tmp_path / "cine.dcm", arr, frames=frames,
                      PixelSpacing=[0.2, 0.2]), arr


def test_multi_frame_offers_its_frames_as_images(tmp_path: Path) -> None:
    """Issue 17: by default each frame of a multi-frame DICOM is an image, ``cine.dcm#k``
    (1-based, as DICOM numbers frames); the file as a whole is not one image."""
    p, arr = _cine(tmp_path)
    with pytest.raises(MultiFrameDicom, match=r"cine\.dcm: multi-frame DICOM \(3 frames\).*"
                                              r"cine\.dcm#1 \.\.\. cine\.dcm#3") as e:
        read_metadata(p)
    assert e.value.frames == 3 and e.value.meta.width == 32
    with pytest.raises(ImageLoadError, match="multi-frame"):
        load_image(p)
    for k in (1, 3):
        q = frame_path(p, k)
        m = read_metadata(q)
        assert (m.frame, m.frames, m.width, m.height, m.spacing) == (k, 3, 32, 24, (0.2, 0.2))
        x = load_image(q)
        assert x.meta.path == q
        np.testing.assert_array_equal(x.pixels, arr[k - 1])
    assert quick_hash(frame_path(p, 1)) != quick_hash(frame_path(p, 2)) != quick_hash(p)
    with pytest.raises(ImageLoadError, match=r"cine\.dcm#4: there is no frame 4: the DICOM "
                                             r"has 3 frames"):
        read_metadata(frame_path(p, 4))
    png = tmp_path / "a.png"
    png.write_bytes(_png_bytes())
    with pytest.raises(ImageLoadError, match=r"a\.png#2: a frame number .* this is a PNG"):
        load_image(frame_path(png, 2))


def _png_bytes() -> bytes:
    import cv2

    return cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()


def test_multi_frame_refused_by_the_setting_names_the_frame_count(tmp_path: Path,
                                                                  monkeypatch) -> None:
    p, _ = _cine(tmp_path)
    monkeypatch.setenv("LMK_STUDIO_DICOM_FRAMES", "refuse")
    for f in (read_metadata, load_image):
        with pytest.raises(ImageLoadError, match=r"cine\.dcm: multi-frame DICOM \(3 frames\) "
                                                 r"refused by the setting dicom_frames") as e:
            f(p)
        assert not isinstance(e.value, MultiFrameDicom)
    monkeypatch.setenv("LMK_STUDIO_DICOM_FRAMES", "sometimes")
    with pytest.raises(LmkError, match="LMK_STUDIO_DICOM_FRAMES='sometimes'"):
        read_metadata(p)


def test_project_adds_each_frame_and_finds_them_again(tmp_path: Path, monkeypatch) -> None:
    from lmk_studio.core.store import Project
    from lmk_studio.core.templates import bundled_templates

    _, arr = _cine(tmp_path / "imgs")
    make_dicom(tmp_path / "imgs" / "single.dcm", _ramp())
    tpl = next(iter(bundled_templates().values()))
    with Project.create(tmp_path / "p.lmk", tpl, tmp_path / "imgs") as proj:
        recs = proj.images()
        assert [r.name for r in recs] == ["cine.dcm#1", "cine.dcm#2", "cine.dcm#3", "single.dcm"]
        assert all(not r.missing and not r.changed for r in recs)
        assert recs[0].spacing == (0.2, 0.2)
        np.testing.assert_array_equal(load_image(recs[1].path).pixels, arr[1])
        proj.add_images([tmp_path / "imgs" / "cine.dcm"])  # again: every frame is known
        assert len(proj.last_faults) == 3 and len(proj.images()) == 4
    moved = tmp_path / "moved"
    (tmp_path / "imgs").rename(moved)
    with Project.open(tmp_path / "p.lmk") as proj:
        assert [r.missing for r in proj.images()] == [True] * 4
        assert proj.relocate_images(moved) == 4
        assert [r.missing for r in proj.images()] == [False] * 4
    monkeypatch.setenv("LMK_STUDIO_DICOM_FRAMES", "refuse")
    with Project.create(tmp_path / "q.lmk", tpl, moved) as proj:
        assert [r.name for r in proj.images()] == ["single.dcm"]
        assert "3 frames" in proj.last_faults[0][1]


def test_object_without_pixel_data_is_refused(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "report.dcm", None)
    with pytest.raises(ImageLoadError, match=r"report\.dcm: DICOM object without pixel data") as e:
        load_image(p)
    assert "SR" in str(e.value) and "not an image" in str(e.value)
    # also with image attributes but no PixelData element
    q = make_dicom(tmp_path / "nopix.dcm", None, Rows=10, Columns=10)
    with pytest.raises(ImageLoadError, match="without pixel data"):
        read_metadata(q)


def test_truncated_dicom_is_refused_before_decoding(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "cut.dcm", _ramp())
    p.write_bytes(p.read_bytes()[:-300])
    with pytest.raises(ImageLoadError, match=r"cut\.dcm: truncated DICOM"):
        read_metadata(p)


def test_not_dicom_and_empty(tmp_path: Path) -> None:
    t = tmp_path / "text.dcm"
    t.write_text("this is a plain text file, not DICOM\n" * 10, encoding="utf-8")
    with pytest.raises(ImageLoadError, match=r"text\.dcm: not an image: the file contains text"):
        load_image(t)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(bytes(range(256)) * 2)
    with pytest.raises(ImageLoadError, match=r"junk\.dcm: "):
        load_image(junk)
    z = tmp_path / "empty.dcm"
    z.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.dcm: "):
        read_metadata(z)


@pytest.mark.parametrize("tsx", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_uncompressed_syntaxes(tmp_path: Path, tsx) -> None:
    arr = _ramp()
    p = make_dicom(tmp_path / "u.dcm", arr, tsx=tsx, PixelSpacing=[0.2, 0.2])
    assert read_metadata(p).spacing == (0.2, 0.2)
    np.testing.assert_array_equal(load_image(p).pixels, arr)
    cut = tmp_path / "ucut.dcm"
    cut.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ImageLoadError, match="truncated DICOM"):
        read_metadata(cut)


def test_extensionless_dicom_found_by_preamble(tmp_path: Path) -> None:
    arr = _ramp()
    make_dicom(tmp_path / "IM0001", arr)
    (tmp_path / "README").write_text("not an image", encoding="utf-8")
    paths = list_images(tmp_path)
    assert [p.name for p in paths] == ["IM0001"]
    np.testing.assert_array_equal(load_image(paths[0]).pixels, arr)


def test_dual_personality_tiff_preamble_is_read_as_dicom(tmp_path: Path) -> None:
    """Issue 17: a preamble that starts with a TIFF header (as modalities write, so one file is
    both) with DICM at 128 is DICOM, as pydicom and PS3.10 decide; not a "corrupt TIFF"."""
    arr = _ramp()
    p = make_dicom(tmp_path / "dual.dcm", arr, PixelSpacing=[0.1, 0.1])
    raw = bytearray(p.read_bytes())
    raw[:8] = b"II*\x00\x08\x00\x00\x00"  # TIFF header pointing at a (bogus) directory
    p.write_bytes(bytes(raw))
    tif = tmp_path / "dual.tif"  # the same bytes named as a TIFF: the content decides
    tif.write_bytes(bytes(raw))
    for q in (p, tif):
        m = read_metadata(q)
        assert (m.kind, m.width, m.height, m.spacing) == ("dicom", 32, 24, (0.1, 0.1))
        np.testing.assert_array_equal(load_image(q).pixels, arr)


def test_dicom_with_another_extension_is_found_by_its_preamble(tmp_path: Path) -> None:
    """The extension is only a hint: Siemens ``.IMA`` and other suffixes are DICOM by DICM."""
    arr = _ramp()
    make_dicom(tmp_path / "scan.IMA", arr)
    (tmp_path / "notes.txt").write_text("x" * 200, encoding="utf-8")
    paths = list_images(tmp_path)
    assert [q.name for q in paths] == ["scan.IMA"]
    np.testing.assert_array_equal(load_image(paths[0]).pixels, arr)
    with pytest.raises(ImageLoadError, match=r"notes\.txt: unsupported file type '\.txt'"):
        load_image(tmp_path / "notes.txt")


def test_rle_lossless_compressed(tmp_path: Path) -> None:
    arr = _ramp()
    p = make_dicom(tmp_path / "plain.dcm", arr, PixelSpacing=[0.1, 0.1])
    ds = pydicom.dcmread(p)
    ds.compress(RLELossless)  # pydicom's own RLE encoder
    q = tmp_path / "rle.dcm"
    ds.save_as(q)
    assert pydicom.dcmread(q, stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
    m = read_metadata(q)
    assert (m.width, m.height, m.spacing) == (32, 24, (0.1, 0.1))
    np.testing.assert_array_equal(load_image(q).pixels, arr)


def test_jpeg2000_lossless_compressed(tmp_path: Path) -> None:
    from pydicom.pixels.encoders import JPEG2000LosslessEncoder

    if not JPEG2000LosslessEncoder.is_available:
        pytest.skip("pylibjpeg-openjpeg cannot encode here")
    arr = _ramp(64, 80)  # openjpeg's default 6 resolutions need >= 32 px per side
    ds = pydicom.dcmread(make_dicom(tmp_path / "plain.dcm", arr))
    ds.compress(JPEG2000Lossless)
    q = tmp_path / "j2k.dcm"
    ds.save_as(q)
    assert pydicom.dcmread(q, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        JPEG2000Lossless
    )
    assert read_metadata(q).width == 80
    np.testing.assert_array_equal(load_image(q).pixels, arr)


def test_rgb_dicom_to_grey(tmp_path: Path) -> None:
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    p = make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    assert read_metadata(p).conversion == "RGB -> grey = 0.299 R + 0.587 G + 0.114 B " \
                                          "(ITU-R BT.601 luma)"
    x = load_image(p)
    assert x.pixels.shape == (8, 10)
    expect = 0.299 * 200 + 0.587 * 100 + 0.114 * 10
    assert abs(float(x.pixels[0, 0]) - expect) <= 1.0
    assert read_metadata(make_dicom(tmp_path / "g.dcm", _ramp())).conversion is None


def test_palette_colour_goes_through_its_palette(tmp_path: Path) -> None:
    """PALETTE COLOR pixels are indices into the file's palette, not intensities: mapped to
    RGB by the palette, then to grey, and the conversion is named."""
    from pydicom.pixels import apply_color_lut

    src = Path(pydicom.__file__).parent / "data" / "test_files" / "examples_palette.dcm"
    if not src.is_file():
        pytest.skip(f"{src} is not in this pydicom install")
    m = read_metadata(src)
    assert m.conversion is not None and m.conversion.startswith("PALETTE COLOR -> RGB")
    ds = pydicom.dcmread(src)
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(load_image(src).pixels - grey).max() <= 1.0


def test_unicode_dicom_path_and_folder(tmp_path: Path) -> None:
    d = tmp_path / "röntgen_画像"
    make_dicom(d / "ïmg.dcm", _ramp(), PixelSpacing=[0.1, 0.1])
    make_dicom(d / "cine.dcm", np.stack([_ramp()] * 2), frames=2)
    f = ImageFolder(d)
    metas = f.read_all_metadata()
    assert [m is None for m in metas] == [True, False]  # natural order: cine, ïmg
    assert f.faults[0][0].name == "cine.dcm" and "multi-frame" in f.faults[0][1]
    assert f.image(1).pixels.shape == (24, 32)


def test_deflated_syntax(tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    arr = _ramp()
    p = make_dicom(tmp_path / "defl.dcm", arr, tsx=DeflatedExplicitVRLittleEndian)
    assert read_metadata(p).height == 24
    np.testing.assert_array_equal(load_image(p).pixels, arr)


def test_truncated_compressed_dicom_fails_with_a_clear_message(tmp_path: Path) -> None:
    ds = pydicom.dcmread(make_dicom(tmp_path / "plain.dcm", _ramp(64, 64)))
    ds.compress(RLELossless)
    q = tmp_path / "rlecut.dcm"
    ds.save_as(q)
    q.write_bytes(q.read_bytes()[:-400])  # encapsulated data has no length to check up front
    with pytest.raises(ImageLoadError, match=r"rlecut\.dcm: truncated or damaged DICOM"):
        load_image(q)


def test_jpeg_baseline_encapsulated(tmp_path: Path) -> None:
    """A cv2-encoded JPEG wrapped as DICOM JPEG Baseline: decoded by pylibjpeg / Pillow."""
    import cv2
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    arr = (_ramp(64, 64, top=255)).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    p = make_dicom(tmp_path / "plain.dcm", arr)
    ds = pydicom.dcmread(p)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    q = tmp_path / "jpeg.dcm"
    ds.save_as(q, enforce_file_format=True)
    x = load_image(q)
    assert x.pixels.shape == (64, 64)
    assert np.abs(x.pixels - arr).max() <= 4  # lossy


# ---- codestreams that claim another size than the header (issue 13 item 4, the gaps) --------
_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _patch_codestream(frame: bytes, w: int, h: int) -> bytes:
    """The codestream with its SOF (JPEG, JPEG-LS) or SIZ (JPEG 2000, one tile) size set."""
    import struct

    b = bytearray(frame)
    if b[:2] == b"\xff\xd8":
        k = min(i for i in (b.find(m) for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc3",
                                                 b"\xff\xf7")) if i >= 0)
        b[k + 5:k + 9] = struct.pack(">HH", h, w)
    else:
        k = b.find(b"\xff\x4f\xff\x51")
        b[k + 8:k + 16] = struct.pack(">II", w, h)
        b[k + 24:k + 32] = struct.pack(">II", w, h)  # tile = image
    return bytes(b)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm"])
def test_codestream_size_is_checked_before_decoding(tmp_path: Path, monkeypatch, name) -> None:
    """A decoder allocates what the codestream says: its SOF / SIZ size is read first, refused
    over the pixel limit (with how to raise it) or when it is not the header's."""
    from pydicom.encaps import encapsulate, get_frame

    src = _TEST_FILES / name
    if not src.is_file():
        pytest.skip(f"{src} is not in this pydicom install")
    ds = pydicom.dcmread(src)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    assert codestream_size(frame)[:2] == (cols, rows)
    load_image(src)  # the genuine file loads
    monkeypatch.setenv("LMK_STUDIO_MAX_PIXELS", str(rows * cols + 10))
    for (w, h), why in (((cols * 4, rows * 4), r"declares \d+ x \d+ pixels .* although the "
                         r"header says \d+ x \d+: more than the limit .*LMK_STUDIO_MAX_PIXELS"),
                        ((cols, rows - 1), r"is \d+ x \d+ pixels but the header says")):
        ds.PixelData = encapsulate([_patch_codestream(frame, w, h)])
        q = tmp_path / f"{w}x{h}-{name}"
        ds.save_as(q)
        read_metadata(q)  # the header alone is fine: the folder scan never decodes
        with pytest.raises(ImageLoadError, match=rf"{q.name}: the JPEG[- A-Z0-9]* codestream "
                                                 rf"{why}"):
            load_image(q)


def test_plain_jpeg_claiming_a_huge_size_is_refused_before_decoding(tmp_path: Path) -> None:
    import cv2

    buf = cv2.imencode(".jpg", np.zeros((64, 64), np.uint8))[1].tobytes()
    p = tmp_path / "bomb.jpg"
    p.write_bytes(_patch_codestream(buf, 60000, 60000))
    with pytest.raises(ImageLoadError, match=r"bomb\.jpg: 60000 x 60000 pixels .* limit"):
        load_image(p)


def test_codestream_size_reader() -> None:
    import struct

    sof = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc3\x00\x0b\x10" + struct.pack(">HH", 7, 9) + b"\x01"
    assert codestream_size(sof + b"\x01\x11\x00\xff\xda") == (9, 7, 1)
    ls = b"\xff\xd8\xff\xf7\x00\x0b\x10\x00\x00\x00\x00\x01\x01\x11\x00"  # size in LSE 4
    lse = b"\xff\xf8\x00\x0c\x04\x04" + struct.pack(">II", 70000, 80000)
    assert codestream_size(ls + lse + b"\xff\xda") == (80000, 70000, 1)
    assert codestream_size(ls + b"\xff\xda") == (0, 0, 1)  # DNL-style: set later
    siz = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIII", 110, 60, 10, 0)
    assert codestream_size(siz + bytes(16) + b"\x00\x03" + bytes(9)) == (100, 60, 3)
    assert codestream_size(b"\x00" * 50) is None


# ---- bounded work for crafted DICOMs (issue 13, item 4) --------------------------------------
def _many_elements(n: int) -> list:
    from pydicom.dataelem import DataElement

    return [DataElement((0x0009 + 2 * (k // 60000), 0x1000 + k % 60000), "LO", "ab")
            for k in range(n)]


@pytest.mark.parametrize("tsx", ["plain", "deflated"])
def test_header_of_too_many_elements_is_refused_quickly(tmp_path: Path, monkeypatch, tsx) -> None:
    """A 49 KB deflated file used to take ~55 s in the header read: the parse has a budget."""
    import time

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    import lmk_studio.core.images as images

    monkeypatch.setattr(images, "DICOM_MAX_READS", 2000)  # ~1000 elements, to keep this quick
    p = make_dicom(tmp_path / "many.dcm", _ramp(),
                   tsx=DeflatedExplicitVRLittleEndian if tsx == "deflated" else
                   ExplicitVRLittleEndian)
    import pydicom

    ds = pydicom.dcmread(p)
    for el in _many_elements(3000):
        ds.add(el)
    ds.save_as(p, enforce_file_format=True)
    t0 = time.monotonic()
    for f in (read_metadata, load_image):
        with pytest.raises(ImageLoadError, match="too many data elements"):
            f(p)
    assert time.monotonic() - t0 < 5.0


def test_deflate_bomb_is_refused_by_its_inflated_size(tmp_path: Path, monkeypatch) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    import lmk_studio.core.images as images

    monkeypatch.setattr(images, "_HEADER_SLACK", 1 << 20)
    monkeypatch.setenv("LMK_STUDIO_MAX_PIXELS", "10000")  # cap: 1 MB + 80 KB
    import pydicom

    p = make_dicom(tmp_path / "bomb.dcm", _ramp(), tsx=DeflatedExplicitVRLittleEndian)
    ds = pydicom.dcmread(p)
    ds.add_new(0x00091010, "OB", bytes(8 << 20))  # 8 MB of zeros deflate to a few KB
    ds.save_as(p, enforce_file_format=True)
    assert p.stat().st_size < 100_000
    for f in (read_metadata, load_image):
        with pytest.raises(ImageLoadError, match="inflates to more than"):
            f(p)
    monkeypatch.undo()
    assert load_image(p).shape == (24, 32)  # a sound file within the default cap still loads


def test_damaged_value_representation_is_refused_not_a_traceback(tmp_path: Path) -> None:
    """Found by tests/test_fuzz_inputs.py (seed 1): an unknown VR raised NotImplementedError
    when the value was first used, outside the header parse."""
    p = make_dicom(tmp_path / "vr.dcm", _ramp())
    data = p.read_bytes()
    i = data.index(b"\x28\x00\x10\x00US")  # Rows, explicit VR little endian
    p.write_bytes(data[:i + 4] + b"QS" + data[i + 6:])
    for f in (read_metadata, load_image):
        with pytest.raises(ImageLoadError, match=r"vr\.dcm: corrupt DICOM header"):
            f(p)
