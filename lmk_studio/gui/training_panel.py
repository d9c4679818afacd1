"""The training dock: pick job, preset and device, start / cancel / resume, and watch progress,
ETA, live loss curves and the log of the background training process.

Training runs in a separate process (engine.process via gui.job_bridge): a crash or an
out-of-memory kill there is reported here in words and the window carries on.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core.errors import LmkError
from lmk_studio.engine.common import ProgressEvent, describe_device, select_device
from lmk_studio.engine.jobs import BUNDLED_PRESETS, JOB_STAGE, JOBS, check_presets
from lmk_studio.engine.process import default_torch_threads

from .job_bridge import JobBridge
from .presets import PRESET_WORDS, default_preset, estimate

log = logging.getLogger("lmk_studio.gui.training")

STAGE_WORDS = {
    "classical": "Classical preview",
    "stage1-load": "Stage I: loading images",
    "stage1": "Stage I: training",
    "stage1-predict": "Stage I: predicting",
    "stage1-consensus": "Stage I: consensus over similar images",
    "stage1-refine-adapt": "Stage I: adapting to each image",
    "stage2-load": "Stage II: loading images",
    "stage2": "Stage II: training",
    "stage2-predict": "Stage II: predicting",
}
FILE_ITEM = "file…"
LOG_LINES = 2000
MAX_CURVE_POINTS = 4000


def stage_words(stage: str) -> str:
    if stage in STAGE_WORDS:
        return STAGE_WORDS[stage]
    for key, words in STAGE_WORDS.items():
        if stage.startswith(key + "-") or stage.startswith(key + ":"):
            return f"{words} ({stage[len(key) + 1:]})"
    return stage.replace("-", " ").capitalize()


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "ETA –"
    s = int(round(seconds))
    if s >= 3600:
        return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"ETA {s // 60}:{s % 60:02d}"


#: job -> (run kind, checkpoint key) a resume would continue (engine stage1/stage2 job._train)
RESUME_FROM = {"stage1": (("stage1", "dir"),), "stage2": (("stage2", "trainer"),),
               "all": (("stage1", "dir"), ("stage2", "trainer"))}


def resumable(proj: Any, job: str) -> str | None:
    """Words for the run a Resume of `job` would continue ("Stage I run 4, cancelled"), or None
    when there is none: the newest run of the stage ended cancelled or failed and its
    checkpoint is still on disk (what the stage jobs look for).

    `proj` is the window's open Project: never open the file a second time here. Opening runs
    a plain open()/close() of the .lmk (the header check), and on POSIX closing any descriptor
    of a file drops every lock this process holds on it, SQLite's included: the window's
    connection then read a project a job process was writing and the file ended malformed.
    """
    if proj is None or job not in RESUME_FROM:
        return None
    from lmk_studio.engine import checkpoints

    try:
        runs = sorted(proj.runs(), key=lambda r: r.id, reverse=True)
        found = []
        for kind, key in RESUME_FROM[job]:
            newest = next((r for r in runs if r.kind == kind), None)
            if newest is None or newest.status not in ("cancelled", "failed"):
                continue
            stored = (newest.checkpoints or {}).get(key)
            if not stored:
                continue
            try:
                path = checkpoints.resolve(proj, stored, "checkpoint")
            except LmkError:
                continue
            if path.exists():
                found.append(newest)
    except (LmkError, OSError) as exc:
        log.info("cannot tell whether %s has a run to resume: %s", proj, exc)
        return None
    if not found:
        return None
    r = max(found, key=lambda r: r.id)
    words = "Stage I" if r.kind == "stage1" else "Stage II"
    return f"{words} run {r.id}, {r.status}"


def device_choices() -> tuple[list[tuple[str, str]], str]:
    """(value, label) pairs for the device picker and a sentence on what was found."""
    auto = select_device("auto")
    found = describe_device(auto)
    if auto.type == "cpu":
        threads = default_torch_threads()
        found = (f"CPU — no GPU found ({os.cpu_count() or 1} cores; training uses {threads} "
                 f"thread{'s' if threads > 1 else ''} and leaves the rest to the window)")
    items = [("auto", f"Automatic: {found.split(' (')[0]}"), ("cpu", "CPU")]
    try:
        import torch

        if torch.cuda.is_available():
            items.append(("cuda", describe_device(torch.device("cuda"))))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            items.append(("mps", "GPU: Apple MPS"))
    except Exception as exc:  # noqa: BLE001 - a broken driver must not break the panel
        log.warning("probing GPUs failed: %s", exc)
    return items, found


class LossPlot(pg.PlotWidget):
    """One curve per loss key of the stage being trained; x = training step of that stage."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setBackground("w")
        self.showGrid(x=True, y=True, alpha=0.3)
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        self.addLegend(offset=(-10, 10))
        self.stage: str | None = None
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.data: dict[str, tuple[list[float], list[float]]] = {}
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._redraw)

    def reset(self, stage: str | None = None) -> None:
        self.clear()
        self.curves.clear()
        self.data.clear()
        self.stage = stage
        self.setTitle(stage_words(stage) if stage else "")

    def add(self, ev: ProgressEvent) -> None:
        if not ev.losses:
            return
        if ev.stage != self.stage:
            self.reset(ev.stage)
        x = float(ev.epoch * max(1, ev.steps) + ev.step)
        for key, value in ev.losses.items():
            try:
                y = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(y):
                continue
            if key not in self.curves:
                pen = pg.mkPen(pg.intColor(len(self.curves), hues=9), width=2)
                self.curves[key] = self.plot([], [], pen=pen, name=key)
                self.data[key] = ([], [])
            xs, ys = self.data[key]
            xs.append(x)
            ys.append(y)
            if len(xs) > MAX_CURVE_POINTS:  # keep drawing cheap on long runs
                del xs[1::2], ys[1::2]
        self._dirty = True
        if not self._timer.isActive():
            self._timer.start()

    def _redraw(self) -> None:
        if self._dirty:
            self._dirty = False
            for key, curve in self.curves.items():
                curve.setData(*self.data[key])


class TrainingPanel(QWidget):
    """Dock content of the main window. Only one job at a time; the GUI never blocks on it."""

    about_to_start = Signal(dict)  # the spec, before the child starts: what the run will use
    started = Signal(str)          # job name
    progress = Signal(object)      # engine.common.ProgressEvent
    finished = Signal(list)        # run ids written: reload points from the store
    failed = Signal(str)           # words + log path; crashes too
    cancelled = Signal(list)       # run ids that were stopped (resumable)
    log_line = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Path | None = None
        self.opened: Any = None  # the window's open Project (see set_project)
        self.bridge = JobBridge(self)
        self.current_job: str | None = None
        self._latest_step: ProgressEvent | None = None
        self._latest_stage: ProgressEvent | None = None
        self._label_timer = QTimer(self)
        self._label_timer.setSingleShot(True)
        self._label_timer.setInterval(100)
        self._label_timer.timeout.connect(self._refresh_labels)
        self._build()
        self.bridge.started.connect(self._on_started)
        self.bridge.progress.connect(self._on_progress)
        self.bridge.log_line.connect(self._on_log)
        self.bridge.finished.connect(self._on_finished)
        self.bridge.cancelled.connect(self._on_cancelled)
        self.bridge.failed.connect(self._on_failed)
        self._update_buttons()

    # ---- layout --------------------------------------------------------------------------
    def _build(self) -> None:
        self.project_label = QLabel("No project open")
        self.project_label.setWordWrap(True)
        self.job_combo = QComboBox()
        for name, words in JOBS.items():
            self.job_combo.addItem(words, name)
        self.preset_combo = QComboBox()
        for name in BUNDLED_PRESETS:
            self.preset_combo.addItem(name, name)
            self.preset_combo.setItemData(self.preset_combo.count() - 1,
                                          PRESET_WORDS.get(name, ""),
                                          Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.addItem(FILE_ITEM, None)
        self.preset_combo.setToolTip("quick: the demo in about a minute; cpu: real X-rays on a "
                                     "CPU; paper: the published schedule (GPU)")
        self._preset_prev = 0
        self._preset_chosen = False  # the user picked one: a project change keeps it
        self.preset_combo.activated.connect(self._on_preset_chosen)
        self.preset_info = QLabel("")
        self.preset_info.setObjectName("presetInfo")
        self.preset_info.setWordWrap(True)
        self.device_combo = QComboBox()
        items, found = device_choices()
        for value, label in items:
            self.device_combo.addItem(label, value)
        self._auto_device = select_device("auto").type
        self.device_label = QLabel(found)
        self.device_label.setWordWrap(True)
        self.n_images = 0
        self.longest_side: int | None = None

        form = QFormLayout()
        form.addRow("Project", self.project_label)
        form.addRow("Job", self.job_combo)
        form.addRow("Preset", self.preset_combo)
        form.addRow("", self.preset_info)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.device_label)
        for combo in (self.job_combo, self.preset_combo, self.device_combo):
            combo.currentIndexChanged.connect(lambda _i: self._update_preset_info())
        self.job_combo.currentIndexChanged.connect(lambda _i: self._update_buttons())

        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("continue the last cancelled or interrupted training")
        self.start_button.clicked.connect(lambda: self.start(self.selected_job()))
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(lambda: self.start(self.selected_job(), resume=True))
        buttons = QHBoxLayout()
        for b in (self.start_button, self.cancel_button, self.resume_button):
            buttons.addWidget(b)

        self.step_label = QLabel("Idle")
        self.stage_label = QLabel("")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.bar.setFormat("%p%")
        self.eta_label = QLabel("")
        bar_row = QHBoxLayout()
        bar_row.addWidget(self.bar, 1)
        bar_row.addWidget(self.eta_label)

        self.plot = LossPlot()
        self.plot.setMinimumHeight(140)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_LINES)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setMinimumHeight(80)
        self.log_file_label = QLabel("")
        self.log_file_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.log_file_label.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        self._sections = QVBoxLayout()  # what the window adds (the runs table)
        lay.addLayout(self._sections)
        lay.addWidget(self.step_label)
        lay.addWidget(self.stage_label)
        lay.addLayout(bar_row)
        lay.addWidget(self.plot, 2)
        lay.addWidget(self.log_view, 1)
        lay.addWidget(self.log_file_label)

    # ---- public API ----------------------------------------------------------------------
    def add_section(self, widget: QWidget) -> None:
        """Put a widget of the window's (the runs table) under the Start/Cancel buttons."""
        self._sections.addWidget(widget)

    def set_project(self, path: Path | str | None, n_images: int | None = None,
                    longest_side: int | None = None, opened: Any = None) -> None:
        """Which .lmk file the next job runs on (a running job keeps its own). With the image
        count and their typical longest side, the preset follows the project (quick only for
        demo-size images) unless the user picked one, and the estimate is for this project.
        `opened`: the window's open Project, read for what Resume would continue (without it
        Resume is offered whenever a job could start, as the panel cannot tell)."""
        new = Path(path) if path is not None else None
        if new != self.project:
            self._preset_chosen = False  # another project: its own default
        self.project = new
        self.opened = opened if new is not None else None
        self.project_label.setText(self.project.name if self.project else "No project open")
        self.project_label.setToolTip(str(self.project) if self.project else "")
        if n_images is not None:
            self.n_images = int(n_images)
            self.longest_side = longest_side
            if not self._preset_chosen:
                idx = self.preset_combo.findData(self.recommended_preset())
                if idx >= 0:
                    self.preset_combo.setCurrentIndex(idx)
                    self._preset_prev = idx
        self._update_preset_info()
        self._update_buttons()

    def device_type(self) -> str:
        """cpu / cuda / mps: what the selected device means on this machine."""
        dev = self.selected_device()
        return self._auto_device if dev == "auto" else dev.split(":")[0]

    def recommended_preset(self) -> str:
        return default_preset(self.n_images, self.longest_side, self.device_type())

    def _update_preset_info(self) -> None:
        """What the preset is for, and a rough time for this project on this machine."""
        job = self.selected_job()
        preset = self.selected_preset()
        training = job in ("all", "stage1", "stage2")
        words = PRESET_WORDS.get(str(preset), "a preset file of yours") if training else \
            "the job uses the trained model's own settings; no preset"
        est = estimate(job, preset if training else None, self.n_images, self.device_type()) \
            if self.project is not None and self.n_images else None
        if est is None:
            when = ""
        else:
            _s, parts, measured = est
            how = ("rough estimate from a 2-core CPU measurement" if measured else
                   "rough estimate from the step count, not timed on this kind of machine")
            when = f"\nFor {self.n_images} images here: {parts} ({how})."
        rec = self.recommended_preset() if self.project is not None else None
        note = ""
        if training and rec is not None and preset in BUNDLED_PRESETS and preset != rec:
            note = f"\nSuggested for this project: {rec}."
        self.preset_info.setText(f"{preset if training else '–'}: {words}.{when}{note}")

    def is_running(self) -> bool:
        return self.bridge.is_running()

    def selected_job(self) -> str:
        return str(self.job_combo.currentData())

    def selected_preset(self) -> str | None:
        return self.preset_combo.currentData()

    def selected_device(self) -> str:
        return str(self.device_combo.currentData() or "auto")

    def set_preset_file(self, path: Path | str) -> None:
        """Use a preset JSON file (what "file…" picks); it joins the list."""
        p = str(Path(path))
        idx = self.preset_combo.findData(p)
        if idx < 0:
            self.preset_combo.insertItem(self.preset_combo.count() - 1, Path(p).name, p)
            idx = self.preset_combo.findData(p)
            self.preset_combo.setItemData(idx, p, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.setCurrentIndex(idx)
        self._preset_prev = idx

    def start(self, job: str, preset: str | None = None, device: str | None = None,
              resume: bool = False, images: list[int] | None = None) -> bool:
        """Start `job` (see engine.jobs.JOBS) in the background; False (and `failed`) when it
        cannot start: no project, a job already running, a bad preset. `images` limits the
        classical and predict jobs to those image ids (e.g. images added after training)."""
        if self.is_running():
            self._refuse("A job is already running: wait for it or cancel it first.")
            return False
        if self.project is None:
            self._refuse("Open a project first.")
            return False
        preset = preset if preset is not None else self.selected_preset()
        if job in ("predict-stage1", "predict-stage2", "classical"):
            preset = None
        try:
            check_presets(job, preset)
        except LmkError as exc:
            self._refuse(str(exc))
            return False
        spec = {"project": str(self.project), "job": job, "preset": preset,
                "device": device or self.selected_device(), "resume": bool(resume),
                "images": list(images) if images is not None else None}
        return self.start_spec(spec)

    def start_spec(self, spec: dict[str, Any]) -> bool:
        """Start from a full engine.process spec (also used by tests and plugins)."""
        if self.is_running():
            self._refuse("A job is already running: wait for it or cancel it first.")
            return False
        self.about_to_start.emit(dict(spec))
        try:
            self.bridge.start(spec)
        except (LmkError, OSError) as exc:
            self._refuse(f"Could not start the job: {exc}")
            return False
        self.current_job = str(spec.get("job"))
        self.plot.reset()
        self.bar.setValue(0)
        self.eta_label.setText("")
        self.stage_label.setText("")
        self.step_label.setText(f"Starting {JOBS.get(self.current_job, self.current_job)}…")
        self.log_view.appendPlainText(f"— {self.current_job} —")
        self.log_file_label.setText(f"Log: {self.bridge.log_path}")
        self._update_buttons()
        return True

    def cancel(self) -> None:
        """Stop the running job (it saves a checkpoint; Resume continues it)."""
        if self.is_running():
            self.step_label.setText("Cancelling…")
            self.bridge.cancel()
            self._update_buttons()

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Call from the window's closeEvent: stops the child so no run is left "running"."""
        return self.bridge.shutdown(timeout_s)

    # ---- slots ---------------------------------------------------------------------------
    def _refuse(self, message: str) -> None:
        self.step_label.setText(message)
        self.failed.emit(message)

    def _on_preset_chosen(self, index: int) -> None:
        self._preset_chosen = True
        if self.preset_combo.itemText(index) != FILE_ITEM:
            self._preset_prev = index
            return
        path, _ = QFileDialog.getOpenFileName(self, "Preset file", "", "Preset (*.json)")
        if path:
            self.set_preset_file(path)
        else:
            self.preset_combo.setCurrentIndex(self._preset_prev)

    def _on_started(self, job: str) -> None:
        self.step_label.setText(f"Running: {JOBS.get(job, job)}")
        self.started.emit(job)

    def _on_progress(self, ev: ProgressEvent) -> None:
        # labels and bar are refreshed at most every 100 ms from the newest event: relayouting
        # the dock for every event costs the event loop more than the training's chattiness is
        # worth; the loss curves keep every point
        if ev.stage == JOB_STAGE:
            self._latest_step = ev
        else:
            self._latest_stage = ev
            self.plot.add(ev)
        if not self._label_timer.isActive():
            self._label_timer.start()
        self.progress.emit(ev)

    def _refresh_labels(self) -> None:
        step, ev = self._latest_step, self._latest_stage
        self._latest_step = self._latest_stage = None
        if step is not None:
            self.step_label.setText(step.message[:1].upper() + step.message[1:])
        if ev is not None:
            text = stage_words(ev.stage)
            if ev.epochs > 1:
                text += f" — epoch {min(ev.epoch + 1, ev.epochs)}/{ev.epochs}"
            elif ev.steps > 1:
                text += f" — {ev.step}/{ev.steps}"
            if text != self.stage_label.text():
                self.stage_label.setText(text)
            self.stage_label.setToolTip(ev.message)
            self.bar.setValue(int(round(1000 * ev.fraction)))
            eta = format_eta(ev.eta_s)
            if eta != self.eta_label.text():
                self.eta_label.setText(eta)

    def _on_log(self, level: int, text: str) -> None:
        prefix = "" if level < logging.WARNING else f"{logging.getLevelName(level)}: "
        line = prefix + text
        self.log_view.appendPlainText(line)
        self.log_line.emit(line)

    def _ended(self, words: str) -> None:
        self._label_timer.stop()
        self._refresh_labels()
        self.step_label.setText(words)
        self.eta_label.setText("")
        self._update_buttons()

    def _on_finished(self, run_ids: list) -> None:
        self.bar.setValue(1000)
        self._ended(f"Finished (runs {', '.join(map(str, run_ids))})" if run_ids else "Finished")
        self.finished.emit(run_ids)

    def _on_cancelled(self, run_ids: list) -> None:
        self._ended("Cancelled — Resume continues from the last checkpoint")
        self.cancelled.emit(run_ids)

    def _on_failed(self, message: str) -> None:
        self._ended("Failed — see the message and the log")
        self.log_view.appendPlainText(f"ERROR: {message}")
        self.failed.emit(message)

    def _update_buttons(self) -> None:
        running = self.is_running()
        can = self.project is not None and not running
        self.start_button.setEnabled(can)
        if self.opened is None:  # no project to read: as before, the job itself will say
            self.resume_button.setEnabled(can)
        else:
            what = resumable(self.opened, self.selected_job()) if can else None
            self.resume_button.setEnabled(what is not None)
            self.resume_button.setToolTip(
                f"Continue {what} from its last checkpoint" if what else
                "Nothing to resume: no cancelled or interrupted training of this job with a "
                "checkpoint")
        self.cancel_button.setEnabled(running and not self.bridge.process.cancel_requested)
        for w in (self.job_combo, self.preset_combo, self.device_combo):
            w.setEnabled(not running)
