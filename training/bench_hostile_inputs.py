"""Benchmark: hostile inputs that are too slow or too big for the test suite (issue 13).

Every case is a file (or folder) a colleague, a share or an attacker could hand the app: images
that claim huge sizes, decompression bombs, PNG chunks that lie, DICOM headers of millions of
tiny elements, a FIFO named like an image, annotation files with 110,000 labels or deep nesting.
Each runs in its own child process, so its wall time and peak RSS (VmHWM) are its own; a child
that runs past --timeout is killed and counted as a hang.

Goal: 0 tracebacks, 0 hangs over 10 s, peak memory under 1 GB for any single input. Outcome
"refused" means an LmkError naming the file (the message is quoted), "ok" that the input was
accepted and handled.

    nice -n 10 .venv/bin/python training/bench_hostile_inputs.py [--timeout 60] [--only NAME]

Writes training/reports/hostile_inputs.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REPORTS = REPO / "training" / "reports"
GOAL_S, GOAL_MB = 10.0, 1024.0


def _peak_rss_mb() -> float:
    """Peak RSS of this process: VmHWM on Linux (starts afresh at exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- building the inputs -----------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(w: int, h: int, depth: int = 8, extra: bytes = b"", rows: bool = True) -> bytes:
    """A grey PNG of w x h zeros, streamed through zlib (a 64 MP image costs a few MB here)."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
    c = zlib.compressobj(9)
    row = b"\0" * (1 + w * depth // 8)
    idat = b"".join(c.compress(row) for _ in range(h if rows else 1)) + c.flush()
    return b"\x89PNG\r\n\x1a\n" + ihdr + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _deflated(n: int) -> bytes:
    c = zlib.compressobj(9)
    block = bytes(1 << 20)
    out = b"".join(c.compress(block) for _ in range(n >> 20))
    return out + c.compress(bytes(n % (1 << 20))) + c.flush()


def _dicom(path: Path, rows: int, cols: int, deflated: bool = False, n_tiny: int = 0,
           nest: int = 0, pixel_bytes: bytes | None = None) -> None:
    """A DX image written element by element (pydicom would refuse to write some of these)."""
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    def el(g: int, e: int, vr: bytes, val: bytes) -> bytes:
        if vr in (b"OB", b"OW", b"SQ", b"UN"):
            return struct.pack("<HH2sHI", g, e, vr, 0, len(val)) + val
        return struct.pack("<HH2sH", g, e, vr, len(val)) + val

    parts = [el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1.1\0"),
             el(0x0008, 0x0060, b"CS", b"DX")]
    for k in range(n_tiny):
        parts.append(el(0x0009 + 2 * (k // 60000), 0x1000 + k % 60000, b"LO", b"ab"))
    if nest:  # a sequence nested `nest` deep, undefined lengths
        item, seq_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        head = struct.pack("<HH2sHI", 0x0009, 0x1001, b"SQ", 0, 0xFFFFFFFF) + item
        parts.append(head * nest + (item_end + seq_end) * nest)
    us = lambda v: struct.pack("<H", v)  # noqa: E731
    parts += [el(0x0028, 0x0002, b"US", us(1)), el(0x0028, 0x0004, b"CS", b"MONOCHROME2 "),
              el(0x0028, 0x0010, b"US", us(rows)), el(0x0028, 0x0011, b"US", us(cols)),
              el(0x0028, 0x0100, b"US", us(8)), el(0x0028, 0x0101, b"US", us(8)),
              el(0x0028, 0x0102, b"US", us(7)), el(0x0028, 0x0103, b"US", us(0))]
    px = pixel_bytes if pixel_bytes is not None else bytes(rows * cols)
    body = b"".join(parts) + el(0x7FE0, 0x0010, b"OB", px)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.3.4.5"
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=True)
    if deflated:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = c.compress(body) + c.flush()
    path.write_bytes(buf.getvalue() + body)


def _deflated_dicom_bomb(path: Path, inflated: int) -> None:
    """A small valid deflated DICOM whose stream goes on inflating zeros (a private OB element
    of ``inflated`` bytes before the pixels), streamed so building it stays cheap."""
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.3.4.5"
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=True)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = (struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 28) + b"1.2.840.10008.5.1.4.1.1.1.1\0"
            + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated))
    z = c.compress(head)
    block = bytes(1 << 20)
    for _ in range(inflated >> 20):
        z += c.compress(block)
    z += c.flush()
    path.write_bytes(buf.getvalue() + z)


def _patched_codestream(frame: bytes, w: int, h: int) -> bytes:
    """The codestream with the size in its SOF / SOF55 (JPEG, JPEG-LS) or SIZ (JPEG 2000, and
    the tile made the whole image, so a decoder allocates it at once) set to w x h."""
    b = bytearray(frame)
    if b[:2] == b"\xff\xd8":
        k = min(i for i in (b.find(m) for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc3",
                                                 b"\xff\xf7")) if i >= 0)
        b[k + 5:k + 9] = struct.pack(">HH", h, w)
    else:
        k = b.find(b"\xff\x4f\xff\x51")
        b[k + 8:k + 16] = struct.pack(">II", w, h)
        b[k + 24:k + 32] = struct.pack(">II", w, h)
    return bytes(b)


def _codestream_bomb(path: Path, codec: str, w: int, h: int) -> str:
    """A small, valid-looking DICOM (Rows x Columns of its real image) whose compressed frame
    claims w x h pixels: a decoder allocates the codestream's size, not the header's. The
    codestreams come from OpenCV (JPEG), openjpeg through pydicom (JPEG 2000) and pydicom's
    bundled JPEG-LS test file (no JPEG-LS encoder here). Returns the header's size in words."""
    import cv2
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, generate_uid

    if codec == "jpeg-ls":
        src = Path(pydicom.__file__).parent / "data" / "test_files" / \
            "MR_small_jpeg_ls_lossless.dcm"
        ds = pydicom.dcmread(src)
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    else:
        arr = (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
        ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 64, 64, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if codec == "jpeg":
            frame = cv2.imencode(".jpg", arr)[1].tobytes()
        else:
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
            ds.PixelData = arr.tobytes()
            ds.compress(JPEG2000Lossless)
            frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([_patched_codestream(frame, w, h)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return f"{ds.Columns} x {ds.Rows}"


def _labelme(path: Path, shapes: list) -> None:
    path.write_text(json.dumps({"shapes": shapes, "imagePath": "a.png", "imageWidth": 64,
                                "imageHeight": 48}), encoding="utf-8")


def build(root: Path) -> dict[str, tuple[str, str, str]]:
    """Write every input; name -> (operation, path, what it is)."""
    import cv2
    import numpy as np

    cases: dict[str, tuple[str, str, str]] = {}
    img = root / "images"
    img.mkdir()

    def add(name: str, op: str, path: Path, what: str) -> None:
        cases[name] = (op, str(path), what)

    p = img / "claims_20000x20000.png"
    p.write_bytes(_png(20000, 20000, rows=False))
    add("png_claims_400MP", "load", p, f"PNG of {p.stat().st_size} B whose header says 20000 x "
        "20000 (6.1 GB before)")
    p = img / "at_limit_8000x8000.png"
    p.write_bytes(_png(8000, 8000))
    add("png_64MP_8bit", "load", p, f"8-bit PNG of 8000 x 8000 zeros, at the default pixel "
        f"limit ({p.stat().st_size >> 10} KB): accepted, the most a single image may cost")
    p = img / "at_limit_16bit.png"
    p.write_bytes(_png(8000, 8000, depth=16))
    add("png_64MP_16bit", "load", p, "16-bit PNG of 8000 x 8000 zeros, at the limit")
    p = img / "chunk_2p31.png"
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 0, 0, 0, 0))
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", 2**31) + b"IDAT"
                  + b"\0" * 100 + _chunk(b"IEND", b""))
    add("png_chunk_length_2^31", "load", p, "PNG with an IDAT chunk length of 2^31 (2.1 GB before)")
    ztxt = _chunk(b"zTXt", b"comment\0\0" + zlib.compress(bytes(400 << 20), 9))
    p = img / "ztxt_bomb.png"
    p.write_bytes(_png(64, 48, extra=ztxt))
    add("png_ztxt_bomb_400MB", "load", p, f"PNG with a zTXt chunk of {len(ztxt) >> 10} KB that "
        "inflates to 400 MB")
    iccp = _chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(400 << 20), 9))
    p = img / "iccp_bomb.png"
    p.write_bytes(_png(64, 48, extra=iccp))
    add("png_iccp_bomb_400MB", "load", p, "PNG with an iCCP profile that inflates to 400 MB")
    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))
    jpg = bytearray(buf.tobytes())
    k = jpg.index(b"\xff\xc0")
    jpg[k + 5:k + 9] = struct.pack(">HH", 60000, 60000)
    p = img / "claims_60000.jpg"
    p.write_bytes(bytes(jpg))
    add("jpeg_claims_3600MP", "load", p, "JPEG whose frame header says 60000 x 60000")
    ok, buf = cv2.imencode(".tif", np.zeros((16, 16), np.uint8))
    tif = bytearray(buf.tobytes())
    ifd = struct.unpack("<I", tif[4:8])[0]
    for e in range(struct.unpack("<H", tif[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * e
        tag, typ = struct.unpack("<HH", tif[at:at + 4])
        if tag in (256, 257):
            tif[at + 8:at + 12] = struct.pack("<H", 60000) + b"\0\0" if typ == 3 else \
                struct.pack("<I", 60000)
    p = img / "claims_60000.tif"
    p.write_bytes(bytes(tif))
    add("tiff_claims_3600MP", "load", p, "TIFF whose tags say 60000 x 60000")
    p = img / "tiny_elements_defl.dcm"
    _dicom(p, 16, 16, deflated=True, n_tiny=2_000_000)
    add("dicom_deflated_2M_elements", "load", p, f"deflated DICOM of {p.stat().st_size >> 10} KB "
        "holding 2 million tiny elements (the 49 KB case took ~55 s in the header read)")
    p = img / "tiny_elements.dcm"
    _dicom(p, 16, 16, n_tiny=1_000_000)
    add("dicom_plain_1M_elements", "load", p, f"plain DICOM of {p.stat().st_size >> 20} MB of "
        "1 million tiny elements")
    p = img / "deflate_bomb.dcm"
    _deflated_dicom_bomb(p, 1200 << 20)
    add("dicom_deflate_bomb_1.2GB", "load", p, f"deflated DICOM of {p.stat().st_size >> 10} KB "
        "that inflates to 1.2 GB (4.6 GB / 33 s before)")
    p = img / "claims_60000.dcm"
    _dicom(p, 60000, 60000, pixel_bytes=bytes(16))
    add("dicom_claims_3600MP", "load", p, "DICOM whose Rows/Columns say 60000 x 60000")
    for codec, name, (w, h), before in (
            ("jpeg", "jpeg", (30000, 30000), "before: 48 s and 3.6 GB, then a decoder "
             "error, under a 4 GB address-space cap"),
            ("jpeg-ls", "jpegls", (30000, 30000), "before: still decoding after 60 s under "
             "a 4 GB cap"),
            ("j2k", "j2k", (40000, 40000), "before: 1.7 GB in 2.2 s until the 4 GB cap "
             "stopped openjpeg's 6.4 GB of int32 samples")):
        p = img / f"{name}_codestream_{w}.dcm"
        hdr = _codestream_bomb(p, codec, w, h)
        add(f"dicom_{name}_codestream_{w * h // 10**6}MP", "load", p,
            f"DICOM of {p.stat().st_size >> 10} KB, header {hdr}, whose {codec.upper()} "
            f"codestream claims {w} x {h} ({before})")
    p = img / "nested.dcm"
    _dicom(p, 16, 16, nest=50_000)
    add("dicom_nested_50000", "load", p, "DICOM with a sequence nested 50,000 deep")
    if hasattr(os, "mkfifo"):
        fifo = root / "fifo" / "x.png"
        fifo.parent.mkdir()
        os.mkfifo(fifo)
        add("fifo_named_png", "load", fifo, "a FIFO named x.png (blocked forever before)")
        add("fifo_in_new_folder", "new", fifo.parent, "`new` on a folder holding that FIFO")
    add("new_on_all_images", "new", img, "`new` on the folder of every image above (the scan "
        "reads headers only)")
    ann = root / "ann"
    ann.mkdir()
    p = ann / "dup_110k.json"
    _labelme(p, [{"label": "l1", "points": [[float(i % 60), float(i % 40)]],
                  "shape_type": "point"} for i in range(110_000)])
    add("labelme_110k_copies", "labelme", p, "labelme file with 110,000 copies of one label "
        "(never finished before; 3,000 took 34 s)")
    p = ann / "unknown_110k.json"
    _labelme(p, [{"label": f"junk{i}", "points": [[1.0, 1.0]], "shape_type": "point"}
                 for i in range(110_000)])
    add("labelme_110k_unknown", "labelme", p, "labelme file with 110,000 unknown labels (a "
        "9.7 MB error message before)")
    p = ann / "deep.json"
    p.write_text("[" * 1_000_000 + "]" * 1_000_000)
    add("json_nested_1M", "labelme", p, "JSON nested a million deep (RecursionError before)")
    p = ann / "bigint.json"
    p.write_text('{"shapes": [{"label": "l1", "points": [[1' + "0" * 100_000 + ', 1]]}]}')
    add("json_100k_digit_int", "labelme", p, "JSON with a 100,000-digit integer")
    p = ann / "rows_at_cap.csv"
    with p.open("w", encoding="utf-8") as f:
        f.write("image,landmark_index,landmark_name,x_px,y_px,status\n")
        f.write("a.png,0,l1,1e308,2,accepted\n" * 150_000)
    add("csv_150k_rows_1e308", "csv", p, "project CSV at the 150,000-row cap, every row x = "
        "1e308 (accepted, exported to COCO crashed before)")
    p = ann / "rows_over_cap.csv"
    with p.open("w", encoding="utf-8") as f:
        f.write("image,landmark_index,landmark_name,x_px,y_px,status\n")
        f.write("a.png,0,l1,1,2,accepted\n" * 1_200_000)
    add("csv_1.2M_rows", "csv", p, f"project CSV of 1.2 million rows ({p.stat().st_size >> 20} MB, "
        "under the byte cap, over the row cap)")
    p = ann / "too_big.csv"
    with p.open("wb") as f:
        f.truncate(200 << 20)
    add("csv_200MB", "csv", p, "a 200 MB annotation file (over the 32 MB cap: refused unread)")
    p = ann / "points_at_cap.json"
    p.write_text(json.dumps({"format": "lmk_studio-points", "version": 1, "images": [
        {"name": "a.png", "points": [{"index": 0, "x": 1.5, "y": 2.5, "status": "accepted"}]
         * 150_000}]}), encoding="utf-8")
    add("project_json_150k_points", "csv", p, "project JSON of 150,000 points for one landmark "
        f"({p.stat().st_size >> 20} MB)")
    return cases


# ---- the child side ----------------------------------------------------------------------------
def _tiny_project(root: Path):
    import cv2
    import numpy as np

    from lmk_studio.core.store import Project
    from lmk_studio.core.templates import LandmarkDef, Template

    d = root / "proj_imgs"
    d.mkdir(exist_ok=True)
    ok, buf = cv2.imencode(".png", np.zeros((48, 64), np.uint8))
    (d / "a.png").write_bytes(buf.tobytes())
    return Project.create(root / f"p{os.getpid()}.lmk",
                          Template("t", [LandmarkDef(f"l{k}") for k in range(1, 4)]), d)


def _child(op: str, path: str, scratch: str) -> None:
    """One case; prints one JSON line: outcome, message, seconds, peak_mb."""
    import cv2  # noqa: F401 - imported before timing: the baseline is measured apart
    import numpy  # noqa: F401
    import pydicom  # noqa: F401

    from lmk_studio.core import formats
    from lmk_studio.core.errors import LmkError
    from lmk_studio.core.images import load_image, read_metadata

    ops: dict[str, Callable[[], str]] = {}

    def load() -> str:
        read_metadata(path)
        img = load_image(path)
        return f"loaded {img.shape[1]} x {img.shape[0]}"

    def new() -> str:
        from lmk_studio.core.store import Project, remove_project_files
        from lmk_studio.core.templates import LandmarkDef, Template

        target = Path(scratch) / f"new{os.getpid()}.lmk"
        with Project.create(target, Template("t", [LandmarkDef("a")]), path) as p:
            n, faults = len(p.images()), p.last_faults
        remove_project_files(target)
        return f"{n} image(s) added, {len(faults)} skipped by name"

    def labelme() -> str:
        with _tiny_project(Path(scratch)) as p:
            rep = formats.import_labelme(p, path)
            return rep.summary()

    def csv_() -> str:
        with _tiny_project(Path(scratch)) as p:
            rep = formats.import_csv(p, path)
            return rep.summary()

    ops.update(load=load, new=new, labelme=labelme, csv=csv_)
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    try:
        msg, outcome = ops[op](), "ok"
    except LmkError as e:
        msg, outcome = str(e), "refused"
    except Exception as e:  # noqa: BLE001 - counted as a traceback
        msg, outcome = f"{type(e).__name__}: {e}", "traceback"
    dt = time.perf_counter() - t0
    print(json.dumps({"outcome": outcome, "message": msg[:600], "seconds": dt,
                      "peak_mb": _peak_rss_mb(), "baseline_mb": base}))


def _run_case(op: str, path: str, scratch: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", op, path, scratch]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "message": f"killed after {timeout:.0f} s",
                "seconds": time.perf_counter() - t0, "peak_mb": None, "baseline_mb": None}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"outcome": "crash", "message": (r.stderr or "")[-600:], "seconds":
                time.perf_counter() - t0, "peak_mb": None, "baseline_mb": None}
    return json.loads(lines[-1])


def _report(results: dict, cases: dict, args: argparse.Namespace) -> str:
    n_tb = sum(r["outcome"] in ("traceback", "crash") for r in results.values())
    n_hang = sum(r["outcome"] == "hang" or r["seconds"] > GOAL_S for r in results.values())
    n_mem = sum((r["peak_mb"] or 0) > GOAL_MB for r in results.values())
    base = [r["baseline_mb"] for r in results.values() if r.get("baseline_mb")]
    lines = [
        "# Hostile inputs: time and peak memory per input",
        "",
        "Issue 13 (items 3-5). Produced by `nice -n 10 .venv/bin/python "
        "training/bench_hostile_inputs.py`"
        + (f" `--only {args.only}`" if args.only else "") + f" on {platform.machine()} "
        f"({os.cpu_count()} cores, shared with other work), Python {platform.python_version()}.",
        "Each input runs in its own child process: seconds = the operation alone (imports "
        "excluded), peak = that process's VmHWM, imports included "
        f"(Python + numpy + OpenCV + pydicom + lmk_studio alone: "
        f"{min(base):.0f} MB)." if base else "",
        "",
        f"Goal: 0 tracebacks, 0 hangs over {GOAL_S:.0f} s, peak under {GOAL_MB:.0f} MB per "
        f"input. **Result: {n_tb} traceback(s), {n_hang} over {GOAL_S:.0f} s, {n_mem} over "
        f"{GOAL_MB:.0f} MB** ({len(results)} inputs).",
        "",
        "| input | what it is | outcome | s | peak MB | message |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        msg = r["message"].replace("|", "\\|").replace("\n", " ")
        msg = msg if len(msg) <= 220 else msg[:217] + "..."
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") else "-"
        lines.append(f"| {name} | {cases[name][2]} | {r['outcome']} | {r['seconds']:.2f} | "
                     f"{peak} | {msg} |")
    lines += ["", "Paths in messages are relative to the benchmark's temporary folder. "
              "`new_on_all_images` is the sum of the header reads of the whole folder above "
              "(each file bounded on its own).", "",
              "Compressed DICOM pixel data (JPEG, JPEG-LS, JPEG 2000) is checked by its "
              "codestream's own size (SOF / SOF55 + LSE / SIZ) before the codec runs; the "
              "'before' figures of those cases were measured with that check switched off "
              "in a child under a 4 GB address-space limit (RLIMIT_AS), so that the machine "
              "shared with other work was not put at risk.", "",
              "Limits in force (defaults): 64 megapixels per image (`max_pixels` under "
              "`[images]` in the settings file, or `LMK_STUDIO_MAX_PIXELS` for a run), "
              "files up to 8 bytes per allowed pixel + 64 MB, 64 MB of inflated DICOM header, "
              "about 250,000 DICOM elements before the pixel data, 32 MB and 150,000 rows / "
              "shapes / points per annotation file.", ""]
    return "\n".join(ln for ln in lines if ln is not None)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case is a hang")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--no-write", action="store_true", help="print only, keep the report")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmk_hostile_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cases = build(root)
        print(f"built {len(cases)} inputs in {time.perf_counter() - t0:.1f} s", flush=True)
        scratch = root / "scratch"
        scratch.mkdir()
        results = {}
        for name, (op, path, _) in cases.items():
            if args.only and args.only not in name:
                continue
            r = _run_case(op, path, str(scratch), args.timeout)
            r["message"] = r["message"].replace(f"{root}{os.sep}", "")  # paths as in the table
            results[name] = r
            peak = f"{r['peak_mb']:.0f} MB" if r.get("peak_mb") else "-"
            print(f"{name:28s} {r['outcome']:9s} {r['seconds']:6.2f} s  {peak:>8s}  "
                  f"{r['message'][:110]}", flush=True)
    text = _report(results, cases, args)
    if not args.no_write:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "hostile_inputs.md").write_text(text, encoding="utf-8")
        (REPORTS / "hostile_inputs.json").write_text(json.dumps(results, indent=1) + "\n",
                                                     encoding="utf-8")
    print(text.split("\n\n")[2] if "\n\n" in text else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
