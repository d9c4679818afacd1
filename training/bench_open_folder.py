"""Benchmark: opening a folder of 1,000 large X-rays lazily (core.images.ImageFolder) vs a naive
open that decodes every image.

Folder: N files of W x H 16-bit images, a third each 16-bit PNG, 16-bit TIFF and uncompressed
DICOM (with PixelSpacing). Only a few distinct files are encoded; the rest are hard links to
them (disk and time), so file contents sit in the page cache: figures are warm-cache figures.

Each phase runs in its own child process, so its wall time and peak RSS (VmHWM) are its own:
- baseline: python + numpy + cv2 + pydicom imported, nothing opened
- lazy:     ImageFolder(folder) + read_all_metadata() of every file + image(0) (first view)
- browse:   lazy + image(i) for 60 images in turn (the byte-bounded LRU cache at its default)
- naive:    decode every image and keep it (what a non-lazy viewer does) on a subset of K
            images; time and memory extrapolated linearly to N (said so in the report)

    nice -n 10 .venv/bin/python training/bench_open_folder.py [--n 1000] [--size 2000x2500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REPORTS = REPO / "training" / "reports"


def _xray_like(h: int, w: int, seed: int):
    """A smooth 12-bit 'anatomy' with noise: compresses like a real radiograph, not like flat."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 600 + 1800 * np.exp(-(((x - w * 0.5) / (0.3 * w)) ** 2 + ((y - h * 0.45) / (0.35 * h)) ** 2))
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.12) * w
        img += 900 * (((x - cx) ** 2 + (y - cy) ** 2) < r * r)
    img += rng.normal(0, 40, size=(h, w)).astype(np.float32)
    return np.clip(img, 0, 4095).astype(np.uint16)


def make_folder(folder: Path, n: int, w: int, h: int, distinct: int) -> dict:
    import cv2
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    t0 = time.perf_counter()
    sources: list[Path] = []
    for k in range(distinct):
        img = _xray_like(h, w, k)
        kind = ("png", "tif", "dcm")[k % 3]
        p = folder / f"src_{k:02d}.{kind}"
        if kind in ("png", "tif"):
            ok, buf = cv2.imencode("." + kind, img)
            assert ok
            p.write_bytes(buf.tobytes())
        else:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
            ds.Modality = "DX"
            ds.Rows, ds.Columns = h, w
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelSpacing = [0.139, 0.139]
            ds.WindowCenter, ds.WindowWidth = 2000, 3000
            ds.PixelData = img.tobytes()
            ds.save_as(p, enforce_file_format=True)
        sources.append(p)
    gen_s = time.perf_counter() - t0
    for i in range(n):
        src = sources[i % distinct]
        dst = folder / f"img_{i:04d}{src.suffix}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    for s in sources:  # keep only the img_* names in the folder
        s.unlink()
    sizes = {p.suffix: p.stat().st_size for p in folder.iterdir()}
    return {"encode_distinct_s": round(gen_s, 2), "bytes_per_file": sizes}


def _peak_rss_mb() -> float:
    """Peak RSS of this process. Linux: VmHWM, which starts afresh at exec; ru_maxrss does not
    (it keeps the parent's peak from before the fork), so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(phase: str, folder: str, k: int) -> None:
    """Runs in a child process; prints one JSON line."""
    import cv2  # noqa: F401  (imported in every phase so the baseline counts it)
    import numpy as np  # noqa: F401
    import pydicom  # noqa: F401

    from lmk_studio.core.images import ImageFolder, list_images, load_image

    out: dict = {"phase": phase}
    t0 = time.perf_counter()
    if phase == "baseline":
        pass
    elif phase in ("lazy", "browse"):
        f = ImageFolder(folder)
        out["list_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        metas = f.read_all_metadata()
        out["metadata_s"] = time.perf_counter() - t1
        out["n"] = len(metas)
        out["faults"] = len(f.faults)
        t2 = time.perf_counter()
        f.image(0)
        out["first_image_s"] = time.perf_counter() - t2
        out["open_to_first_view_s"] = time.perf_counter() - t0
        if phase == "browse":
            t3 = time.perf_counter()
            for i in range(1, min(61, len(f))):
                f.image(i)
            out["browse_60_s"] = time.perf_counter() - t3
            out["cache_bytes_final"] = f.cached_bytes
            out["cache_budget"] = f.cache_bytes
    elif phase == "naive":
        paths = list_images(folder)[:k]
        held = []
        for p in paths:
            held.append(load_image(p).pixels)
        out["n"] = len(held)
        out["held_bytes"] = int(sum(a.nbytes for a in held))
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(out))


def _ram_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def _run_child(phase: str, folder: Path, k: int) -> dict:
    cmd = [sys.executable, __file__, "--child", phase, "--folder", str(folder), "--k", str(k)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"child {phase} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", default="2000x2500", help="W x H")
    ap.add_argument("--distinct", type=int, default=6)
    ap.add_argument("--k", type=int, default=24, help="naive subset size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child")
    ap.add_argument("--folder")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.folder, a.k)
        return
    w, h = (int(v) for v in a.size.lower().split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="lmk_bench_open_"))
    free_gb = shutil.disk_usage(tmp).free / 1e9
    try:
        gen = make_folder(tmp, a.n, w, h, a.distinct)
        phases: dict[str, list[dict]] = {}
        for _ in range(a.repeats):
            for ph in ("baseline", "lazy", "browse", "naive"):
                phases.setdefault(ph, []).append(_run_child(ph, tmp, a.k))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    def med(ph: str, key: str) -> float:
        vals = sorted(r[key] for r in phases[ph])
        return vals[len(vals) // 2]

    base_rss = med("baseline", "peak_rss_mb")
    k = phases["naive"][0]["n"]
    naive_s_per = med("naive", "wall_s") / k
    naive_bytes_per = phases["naive"][0]["held_bytes"] / k
    res = {
        "command": "nice -n 10 .venv/bin/python training/bench_open_folder.py "
        + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU, "
        f"{platform.python_implementation()} {platform.python_version()}; "
        "contended by other jobs (several helpers share the 2 cores)",
        "folder": {"n": a.n, "width": w, "height": h, "distinct_files": a.distinct,
                   "hard_links": True, "formats": "1/3 PNG16, 1/3 TIFF16, 1/3 DICOM (raw)",
                   "disk_free_gb_before": round(free_gb, 1), **gen},
        "repeats": a.repeats,
        "ram_gb": round(_ram_bytes() / 1e9, 1),
        "raw": phases,
        "baseline_rss_mb": round(base_rss, 1),
        "lazy": {
            "list_s": round(med("lazy", "list_s"), 3),
            "metadata_all_s": round(med("lazy", "metadata_s"), 3),
            "first_image_s": round(med("lazy", "first_image_s"), 3),
            "open_to_first_view_s": round(med("lazy", "open_to_first_view_s"), 3),
            "peak_rss_mb": round(med("lazy", "peak_rss_mb"), 1),
            "faults": phases["lazy"][0]["faults"],
        },
        "browse": {
            "images": min(61, a.n),
            "browse_60_s": round(med("browse", "browse_60_s"), 2),
            "peak_rss_mb": round(med("browse", "peak_rss_mb"), 1),
            "cache_budget_mb": phases["browse"][0]["cache_budget"] / 2**20,
            "cache_final_mb": round(phases["browse"][0]["cache_bytes_final"] / 2**20, 1),
        },
        "naive": {
            "subset": k,
            "measured_s": round(med("naive", "wall_s"), 2),
            "measured_peak_rss_mb": round(med("naive", "peak_rss_mb"), 1),
            "s_per_image": round(naive_s_per, 4),
            "extrapolated_s_for_n": round(naive_s_per * a.n, 1),
            "extrapolated_held_gb_for_n": round(naive_bytes_per * a.n / 1e9, 1),
        },
    }
    lazy_open = res["lazy"]["open_to_first_view_s"]
    res["ratio_naive_over_lazy_time"] = round(res["naive"]["extrapolated_s_for_n"] / lazy_open, 1)
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "open_folder.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (REPORTS / "open_folder.md").write_text(_markdown(res), encoding="utf-8")
    print(_markdown(res))


def _markdown(r: dict) -> str:
    f, lz, br, nv = r["folder"], r["lazy"], r["browse"], r["naive"]
    evicted = (
        " (bounded: older images were evicted)"
        if br["cache_final_mb"] >= 0.8 * br["cache_budget_mb"]
        else " (everything browsed fitted in the budget)"
    )
    spread = ", ".join(f"{x['open_to_first_view_s']:.2f}" for x in r["raw"]["lazy"]) + " s"
    sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(f["bytes_per_file"].items()))
    return f"""# Opening a folder of {f['n']} large X-rays

Command: `{r['command']}`
Machine: {r['machine']}.

Folder: {f['n']} images of {f['width']} x {f['height']} px, 16-bit ({f['formats']}); file sizes
{sizes}. Only {f['distinct_files']} distinct files were encoded, the others are **hard links** to
them (disk and set-up time), so the file contents were in the page cache: these are warm-cache
figures; a cold network share will be slower for the pixel reads (metadata reads touch only the
first kilobytes and the file tail). Each phase ran in its own process, median of {r['repeats']}
runs; peak RSS = VmHWM (high-water mark) of that process. Python + numpy + OpenCV + pydicom alone:
{r['baseline_rss_mb']} MB.

## Lazy open (`lmk_studio.core.images.ImageFolder`)

| step | time |
|---|---|
| list the folder ({f['n']} files) | {lz['list_s']} s |
| metadata of every file (headers only, truncation checks) | {lz['metadata_all_s']} s |
| decode the first image to view | {lz['first_image_s']} s |
| **open to first image on screen** | **{lz['open_to_first_view_s']} s** (runs: {spread}) |

Peak RSS: **{lz['peak_rss_mb']} MB** ({lz['faults']} faults).

Browsing {br['images']} images one after another with the default cache
({br['cache_budget_mb']:.0f} MiB, float32 pixels): {br['browse_60_s']} s in all, peak RSS
**{br['peak_rss_mb']} MB**; the cache held {br['cache_final_mb']} MiB at the end{evicted}.

## Naive open: decode every image and keep it

Measured on the first {nv['subset']} images, not all {f['n']} (holding them all needs
~{nv['extrapolated_held_gb_for_n']} GB of float32 pixels; this machine has {r['ram_gb']} GB RAM):
{nv['measured_s']} s, peak RSS {nv['measured_peak_rss_mb']} MB, i.e. {nv['s_per_image']} s per
image. **Extrapolated linearly to {f['n']} images: {nv['extrapolated_s_for_n']} s and
~{nv['extrapolated_held_gb_for_n']} GB** (extrapolation, not a measurement).

Ratio (naive decode-all time, extrapolated / lazy open-to-first-view, measured):
**{r['ratio_naive_over_lazy_time']}x**.
"""


if __name__ == "__main__":
    main()
