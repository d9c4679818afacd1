"""Which training preset suits this project and machine, what each is for, and how long it takes.

The default follows the project: `quick` only for demo/phantom-size images (it trains at 64x48
and is far off on real X-rays: 41.6 px against 19.7 px for the preview on 8 real cephalograms,
issue 12), `paper` only with a GPU and timm, `cpu` otherwise. The times are a rough per-image cost
model, measured once on a 2-core CPU (README "Accuracy, measured", training/reports/stage1.md and
stage2.md, training/reports/gui_latency.md); the panel says that they are estimates.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

#: images whose longer side is at most this are demo / phantom size (the demo is 320 x 256)
SMALL_SIDE = 512

PRESET_WORDS = {
    "quick": "for the demo and small test images: trains at very low resolution in a minute or "
             "two; too coarse for real X-rays",
    "cpu": "real X-rays on a computer without a GPU: the measured schedule (Stage I adapts to "
           "each image, Stage II co-trains two small detectors)",
    "paper": "the published schedule (HRNet-W18, hundreds of epochs): meant for a GPU; on a CPU "
             "it takes many hours",
}


@dataclass(frozen=True)
class Cost:
    """Seconds = fixed + per_image * images, on the machine it was measured on."""

    fixed: float
    per_image: float
    measured: bool  # False: derived from the step count, never timed on a project

    def seconds(self, n_images: int) -> float:
        return self.fixed + self.per_image * max(0, n_images)


# Measured on a 2-core CPU (shared, load 2-4): cpu preset on 120 Hamedan images: Stage I 6 min
# (~30 s training + consensus/adaptation ~2.8 s per image), Stage II 5 min (600 steps ~4 min +
# ~0.5 s per image); classical preview 7-60 s for 120 images (load-dependent); quick on the
# 24-image demo: Stage I + Stage II about a minute uncontended.
CPU_COSTS: dict[tuple[str, str], Cost] = {
    ("classical", ""): Cost(2.0, 0.3, True),
    ("stage1", "quick"): Cost(25.0, 0.5, True),
    ("stage2", "quick"): Cost(20.0, 0.3, True),
    ("stage1", "cpu"): Cost(30.0, 2.8, True),
    ("stage2", "cpu"): Cost(240.0, 0.5, True),
    # paper on a CPU: 11,250 HRNet steps of batch 20 (Stage I), 3,000 of batch 10 (Stage II);
    # not timed: from ~4 s per batch-20 step on 2 cores
    ("stage1", "paper"): Cost(45000.0, 3.0, False),
    ("stage2", "paper"): Cost(9000.0, 1.0, False),
}
# on a GPU, not timed here: ~0.15 s / 0.1 s per step for the paper schedule; the small presets
# are bound by their per-image work and keep about a third of their CPU time
GPU_COSTS: dict[tuple[str, str], Cost] = {
    ("classical", ""): Cost(2.0, 0.3, True),
    ("stage1", "quick"): Cost(10.0, 0.3, False),
    ("stage2", "quick"): Cost(8.0, 0.2, False),
    ("stage1", "cpu"): Cost(15.0, 1.0, False),
    ("stage2", "cpu"): Cost(60.0, 0.2, False),
    ("stage1", "paper"): Cost(1700.0, 0.5, False),
    ("stage2", "paper"): Cost(300.0, 0.3, False),
}
JOB_STAGES = {"all": ("classical", "stage1", "stage2"), "classical": ("classical",),
              "stage1": ("stage1",), "stage2": ("stage2",),
              "predict-stage1": ("predict-stage1",), "predict-stage2": ("predict-stage2",)}


def has_timm() -> bool:
    return importlib.util.find_spec("timm") is not None


def default_preset(n_images: int, longest_side: int | None, device_type: str,
                   timm: bool | None = None) -> str:
    """The preset a clinician should start from on this project and machine."""
    if longest_side is not None and longest_side <= SMALL_SIDE:
        return "quick"
    gpu = device_type in ("cuda", "mps")
    if gpu and (has_timm() if timm is None else timm):
        return "paper"
    return "cpu"


def duration_words(seconds: float) -> str:
    if seconds < 90:
        return f"{max(5, int(round(seconds / 5.0)) * 5)} s"
    if seconds < 90 * 60:
        return f"{int(round(seconds / 60.0))} min"
    return f"{seconds / 3600.0:.1f} h"


def estimate(job: str, preset: str | None, n_images: int, device_type: str
             ) -> tuple[float, str, bool] | None:
    """(seconds, 'Stage I ~6 min + Stage II ~5 min', measured) for the job, or None when the
    preset is a file (its cost is unknown)."""
    costs = GPU_COSTS if device_type in ("cuda", "mps") else CPU_COSTS
    parts: list[str] = []
    total = 0.0
    measured = True
    for stage in JOB_STAGES.get(job, ()):
        if stage.startswith("predict-"):
            c = Cost(5.0, 0.5 if stage.endswith("2") else 1.0, False)
        else:
            c = costs.get((stage, "" if stage == "classical" else str(preset)))
            if c is None:
                return None
        s = c.seconds(n_images)
        total += s
        measured = measured and c.measured
        name = {"classical": "preview", "stage1": "Stage I", "stage2": "Stage II",
                "predict-stage1": "prediction", "predict-stage2": "prediction"}[stage]
        parts.append(f"{name} ~{duration_words(s)}")
    if not parts:
        return None
    return total, " + ".join(parts), measured
