"""`lmk-studio --self-test`: prove, without a click, that this installation (a source install or
the frozen app) can do what a clinician needs, and name the step that fails.

Steps, each on a phantom project in a temporary folder: write the project; the classical preview;
a tiny Stage I and Stage II (the quick presets' structure, a few steps); predict a new image with
the trained Stage II; export CSV and read it back; read an uncompressed and a JPEG 2000 DICOM
written here (pydicom + pylibjpeg's decoders, found through entry points: what a frozen build can
lose without notice); open the main window offscreen on the project and close it.
Exit 0 when every step passed; otherwise 1, with "self-test failed at step N (name): why".
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_S1 = {"name": "self-test", "start": "learned", "torch_threads": 1,
           "coarse": {"size": [48, 48], "backbone": "small_cnn", "width": 4, "d_model": 16,
                      "heads": 2, "n_layers": 1, "global_type": "classical", "epochs": 1,
                      "steps_per_epoch": 1, "batch": 2, "lr": 0.001, "sigma": 2.0,
                      "eval_every": 1}}
TINY_S2 = {"detector": {"kind": "unet", "base": 4, "depth": 2}, "patch": 32, "scale": 1.0,
           "sigma": 1.5, "steps": 2, "steps_per_epoch": 1, "batch_trusted": 2,
           "batch_pseudo": 2, "calib_warps": 1, "tolerance_px": 6.0}


class _Ctx:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.project: Path | None = None
        self.new_image: Path | None = None


def _project(c: _Ctx) -> str:
    from lmk_studio.core.phantoms import write_demo_project

    c.project = write_demo_project(c.root / "demo", n=5, size=(128, 128), seed=0)
    return f"{c.project.name}, 5 phantom images"


def _preview(c: _Ctx) -> str:
    from lmk_studio.engine.jobs import run_job

    return _points_of(c, run_job(c.project, "classical")[-1], "classical")


def _stage1(c: _Ctx) -> str:
    from lmk_studio.engine.jobs import run_job

    preset = c.root / "stage1.json"
    preset.write_text(json.dumps(TINY_S1), "utf-8")
    return _points_of(c, run_job(c.project, "stage1", str(preset), device="cpu")[-1], "stage1")


def _stage2(c: _Ctx) -> str:
    from lmk_studio.engine.jobs import run_job

    preset = c.root / "stage2.json"
    preset.write_text(json.dumps(TINY_S2), "utf-8")
    return _points_of(c, run_job(c.project, "stage2", str(preset), device="cpu")[-1], "stage2")


def _predict(c: _Ctx) -> str:
    import cv2
    import numpy as np

    from lmk_studio.core.phantoms import make_phantom_set
    from lmk_studio.core.store import Project
    from lmk_studio.engine.jobs import run_job

    c.new_image = c.root / "new patient.png"
    img = make_phantom_set(2, size=(128, 128), seed=11)[1].image
    cv2.imwrite(str(c.new_image), np.round(img * 255).astype(np.uint8))
    with Project.open(c.project) as proj:
        added = proj.add_images([c.new_image])
        if not added:
            raise RuntimeError(f"the new image was not added: {proj.last_faults}")
        rid = run_job(proj, "predict-stage2", device="cpu", images=[added[0].id])[-1]
        placed = [p for p in proj.points(added[0].id) if p.placed]
        if len(placed) != len(proj.template):
            raise RuntimeError(f"run {rid} placed {len(placed)} of {len(proj.template)} points")
    return f"{len(placed)} points on the new image"


def _export(c: _Ctx) -> str:
    from lmk_studio import cli

    out = c.root / "points.csv"
    code = cli.main(["export", str(c.project), "--csv", str(out)])
    if code != 0:
        raise RuntimeError(f"export exited {code}")
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not any((r.get("status") or "") == "predicted" for r in rows):
        raise RuntimeError(f"{out}: {len(rows)} rows, none predicted")
    return f"{len(rows)} rows"


def _dicom(c: _Ctx) -> str:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        JPEG2000Lossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    from lmk_studio.core.images import load_image

    arr = (np.arange(64 * 48).reshape(64, 48) * 7 % 4096).astype(np.uint16)
    done = []
    for name, compress in (("uncompressed", None), ("JPEG 2000", JPEG2000Lossless)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"  # explicit VR little endian
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Rows, ds.Columns = "DX", 64, 48
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = arr.tobytes()
        if compress is not None:
            ds.compress(compress, arr)
        path = c.root / f"{name.replace(' ', '_')}.dcm"
        ds.save_as(path, enforce_file_format=True)
        img = load_image(path)
        px = np.asarray(img.pixels, dtype=np.float64)
        if px.shape != arr.shape:
            raise RuntimeError(f"{path.name}: shape {px.shape}, expected {arr.shape}")
        # the project's own normalisation may rescale: the order of the values must survive
        if np.corrcoef(px.ravel(), arr.ravel().astype(np.float64))[0, 1] < 0.999:
            raise RuntimeError(f"{path.name}: decoded pixels differ from what was written")
        done.append(name)
    return ", ".join(done) + " read"


def _window(c: _Ctx) -> str:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from lmk_studio.gui.app import make_app
    from lmk_studio.gui.main_window import MainWindow

    app = make_app()
    w = MainWindow()
    w.auto_preview = False
    w.auto_suggest = False
    try:
        w.show()
        if not w.open_project(c.project):
            raise RuntimeError(f"the window could not open {c.project}")
        deadline = time.monotonic() + 10
        while w.shown_image_id is None and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        if w.shown_image_id is None:
            raise RuntimeError("no image shown within 10 s")
        return f"{w.windowTitle()}: {len(w.doc.records())} images"
    finally:
        w.close()
        app.processEvents()


def _points_of(c: _Ctx, run_id: int, kind: str) -> str:
    from lmk_studio.core.store import Project

    with Project.open(c.project) as proj:
        run = proj.run(run_id)
        if run.kind != kind or run.status != "finished":
            raise RuntimeError(f"run {run_id} is {run.kind} {run.status}: {run.metrics}")
        n = (run.metrics or {}).get("points_written", 0)
        if not n:
            raise RuntimeError(f"run {run_id} ({kind}) wrote no points")
    return f"run {run_id}, {n} points"


STEPS: list[tuple[str, Callable[[_Ctx], str]]] = [
    ("project", _project), ("preview", _preview), ("stage I", _stage1), ("stage II", _stage2),
    ("predict a new image", _predict), ("export CSV", _export), ("DICOM", _dicom),
    ("window", _window)]


def run_self_test(out: Any = None) -> int:
    """Run every step in order; 0 when all passed, else 1 naming the step that failed."""
    out = out or sys.stdout
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmk_selftest_") as tmp:
        c = _Ctx(Path(tmp))
        os.environ.setdefault("LMK_STUDIO_HOME", str(Path(tmp) / "home"))  # user's files untouched
        for k, (name, step) in enumerate(STEPS, 1):
            t0 = time.perf_counter()
            try:
                what = step(c)
            except BaseException as exc:  # noqa: BLE001 - the point is to name any failure
                if isinstance(exc, KeyboardInterrupt):
                    raise
                print(f"self-test failed at step {k} ({name}): {type(exc).__name__}: {exc}",
                      file=out)
                print("".join(traceback.format_exception(exc))[-3000:], file=out)
                return 1
            print(f"  {k}/{len(STEPS)} {name}: ok ({what}; {time.perf_counter() - t0:.1f} s)",
                  file=out, flush=True)
    print(f"self-test passed ({time.perf_counter() - t_all:.1f} s)", file=out)
    return 0
