"""Contracts every trainer shares: progress events, cancellation, device choice, seeding.

Trainers are plain objects driven by the caller (CLI, GUI job process, tests). They report
through a callback and poll a cancel token, so the same code runs headless and under the GUI.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the GUI process imports this module
    import torch  # (job events, cancel tokens) and must not pay for torch (issue 14)


class Cancelled(Exception):
    """Raised inside a trainer when its cancel token fires; the trainer checkpoints first."""


class CancelToken:
    """Thread- and signal-safe flag a trainer polls at least every second or so."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass
class ProgressEvent:
    """One progress report. `fraction` is overall progress of this stage in [0, 1]."""

    stage: str
    epoch: int
    epochs: int
    step: int
    steps: int
    losses: dict[str, float] = field(default_factory=dict)
    eta_s: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        total = max(1, self.epochs * max(1, self.steps))
        done = self.epoch * max(1, self.steps) + self.step
        return min(1.0, max(0.0, done / total))


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(_event: ProgressEvent) -> None:
    """Default callback: ignore progress."""


class EtaClock:
    """Estimates remaining time from the mean duration of the units done so far."""

    def __init__(self, total_units: int) -> None:
        self.total = max(1, total_units)
        self.start = time.monotonic()

    def eta(self, done_units: int) -> float | None:
        if done_units <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed / done_units * max(0, self.total - done_units)


def select_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; an explicit preference that is unavailable is an error."""
    import torch

    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available")
    if pref == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("--device mps was asked for, but Apple MPS is not available")
    if pref not in ("cpu", "cuda", "mps") and not pref.startswith("cuda:"):
        raise ValueError(f"unknown device {preference!r}: use auto, cpu, cuda or mps")
    return torch.device(pref)


def describe_device(device: torch.device) -> str:
    """Human words for the device, e.g. for the GUI's training panel."""
    import torch

    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "GPU: Apple MPS"
    return f"CPU ({os.cpu_count() or 1} cores, {torch.get_num_threads()} torch threads)"


def seed_everything(seed: int) -> None:
    """Fix every RNG a CPU run uses, so a seeded run reproduces exactly."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
