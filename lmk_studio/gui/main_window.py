"""The main window: start screen or workspace (canvas + image list, landmarks, review, training).

Gestures from the canvas and keys become QUndoCommands (undo.py) whose redo() writes through the
store at once; views redraw from the Document's signals. Training runs in the TrainingPanel's
child process; the window only reacts to its signals, so it never trains or waits.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QByteArray, QEvent, QObject, QRectF, Qt, QThreadPool, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QDockWidget,
    QFileDialog,
    QFrame,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from lmk_studio.core import history
from lmk_studio.core.errors import LmkError
from lmk_studio.core.points import Status
from lmk_studio.gui import settings
from lmk_studio.gui.canvas import Canvas, default_levels
from lmk_studio.gui.errors import describe, log_path, report_exception, show_error
from lmk_studio.gui.exemplar_hint import MIN_IMAGES, ExemplarHint, ExemplarSuggester
from lmk_studio.gui.export_dialog import ExportDialog, run_export
from lmk_studio.gui.help_dialog import HelpDialog
from lmk_studio.gui.image_list import ImageList
from lmk_studio.gui.loader import ImageLoader
from lmk_studio.gui.new_images import FolderWatcher, NewImagesBanner, job_for_new_images
from lmk_studio.gui.review import ReviewPanel
from lmk_studio.gui.runs_panel import RunsPanel, StaleBanner
from lmk_studio.gui.start_screen import NewProjectDialog, StartScreen
from lmk_studio.gui.state import Document
from lmk_studio.gui.template_editor import TemplateEditor
from lmk_studio.gui.template_panel import TemplatePanel
from lmk_studio.gui.undo import (
    AcceptPoints,
    Calibrate,
    ClearPoint,
    MarkAbsent,
    MovePoint,
    PlacePoint,
    SetExemplar,
)

log = logging.getLogger("lmk_studio.gui.window")

MAX_RUN_ROWS = 20  # the runs table shows the newest finished runs
STALE_DEBOUNCE_MS = 700  # the preview re-runs this long after the last exemplar edit
STAGE_OVERLAYS = {  # overlay key -> (run kinds, colour, symbol, words)
    "stage1": (("stage1", "stage1-predict"), "#00e5ff", "t", "Stage I"),
    "stage2": (("stage2", "stage2-predict"), "#ff66cc", "x", "Stage II"),
}


def plural(n: int, one: str, many: str | None = None) -> str:
    """'1 image', '2 images'; with `many`, '1 image was' / '3 images were'."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _scrolled(w: QWidget) -> QScrollArea:
    """`w` in a frameless scroll area that lets it grow to the dock's width."""
    area = QScrollArea()
    area.setWidget(w)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return area


def _is_text_input(w: Any) -> bool:
    """A widget the user types into: Space and Return belong to it."""
    from PySide6.QtWidgets import QAbstractSpinBox, QComboBox, QLineEdit, QPlainTextEdit, QTextEdit

    if isinstance(w, QComboBox):
        return w.isEditable()
    if isinstance(w, QLineEdit | QAbstractSpinBox | QPlainTextEdit | QTextEdit):
        return not w.isReadOnly()  # a log the user clicked into is not typing
    return False


def ensure_demo_project() -> Path:
    """The phantom demo project under the user data dir, written on first use."""
    from lmk_studio.core.paths import data_dir
    from lmk_studio.core.phantoms import write_demo_project

    for k in range(1, 100):
        d = data_dir() / ("demo" if k == 1 else f"demo-{k}")
        existing = sorted(d.glob("*.lmk")) if d.is_dir() else []
        if existing:
            return existing[0]
        if not d.exists():  # a folder left half-written by an earlier failure is not reused
            return Path(write_demo_project(d))
    raise LmkError(f"{data_dir()}: could not find a free folder for the demo project")


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("lmk_studio")
        self.resize(1400, 900)
        self.doc = Document()
        self.undo_stack = QUndoStack(self)
        self.loader = ImageLoader()
        self.last_faults: list[tuple[Path, str]] = []
        self.last_error: str | None = None
        self.shown_image_id: int | None = None
        self._pending_focus: int | None = None
        self._exemplar_was_complete = False
        self.auto_preview = True  # start the classical preview when the exemplar is complete
        self.auto_suggest = True  # rank the images for an exemplar when a project has none
        self._pred_cache: dict[int, dict[int, Any]] = {}
        self._actions: list[tuple[str, QAction]] = []

        self.canvas = Canvas()
        self.start = StartScreen()
        self.suggester = ExemplarSuggester(self)
        self.exemplar_hint = ExemplarHint()
        self.new_images_banner = NewImagesBanner()
        self.folder_watch = FolderWatcher(self)
        self._pending_predict: set[int] = set()  # new images waiting for the running job
        self.stale_banner = StaleBanner()
        self.runs_panel = RunsPanel()
        # what the running job was started from (core.history): stored per run when it ends
        self._job_inputs: dict | None = None
        self._active_before: int | None = None   # the active run when a job (chain) started
        self._before_stale = False               # ... and whether it was out of date then
        self._job_subset = False                 # the job ran on some images only
        self._chain: list[tuple[str, str | None]] = []  # jobs of a re-run still to start
        self._in_chain = False                   # the running job continues a re-run
        self._auto_rerun_of: int | None = None   # active run the preview was re-run for
        self._worse_pair: tuple[int, int] = (0, 0)  # (new, old) run of the open question
        self.worse_question: QMessageBox | None = None
        self._stale_timer = QTimer(self)         # edits come in bursts (a drag, undo clicks)
        self._stale_timer.setSingleShot(True)
        self._stale_timer.setInterval(STALE_DEBOUNCE_MS)
        self._stale_timer.timeout.connect(self.check_stale)
        self.workspace = QWidget()  # the canvas with the exemplar suggestion's banner above it
        wl = QVBoxLayout(self.workspace)
        wl.setContentsMargins(0, 0, 0, 0)
        wl.setSpacing(0)
        wl.addWidget(self.exemplar_hint)
        wl.addWidget(self.new_images_banner)
        wl.addWidget(self.stale_banner)
        wl.addWidget(self.canvas, 1)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.start)
        self.stack.addWidget(self.workspace)
        self.setCentralWidget(self.stack)

        self.image_list = ImageList(self.doc)
        self.template_panel = TemplatePanel(self.doc)
        self.review = ReviewPanel(self.doc)
        self.training = self._make_training_panel()
        if hasattr(self.training, "add_section"):
            self.training.add_section(self.runs_panel)
        self.dock_images = self._dock("Images", self.image_list, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.dock_landmarks = self._dock("Landmarks", self.template_panel,
                                         Qt.DockWidgetArea.RightDockWidgetArea)
        self.dock_review = self._dock("Review", self.review, Qt.DockWidgetArea.RightDockWidgetArea)
        # scrolled: the runs table and preset words made the panel taller than a laptop
        # screen's right column, which forced the window taller than asked
        self.dock_training = self._dock("Training", _scrolled(self.training),
                                        Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.dock_review, self.dock_training)
        self.dock_review.raise_()

        self.cursor_label = QLabel()
        self.cursor_label.setMinimumWidth(340)
        self.progress_label = QLabel()
        self.statusBar().addPermanentWidget(self.progress_label)
        self.statusBar().addPermanentWidget(self.cursor_label)

        self._build_actions()
        self._connect()
        QApplication.instance().installEventFilter(self)  # review keys from every panel
        self._restore_geometry()
        self._show_workspace(False)

    # ------------------------------------------------------------------ construction
    def _make_training_panel(self) -> QWidget:
        try:
            from lmk_studio.gui.training_panel import TrainingPanel
        except Exception as exc:  # shown in the dock itself and logged: never silent
            log.exception("the training panel could not be loaded")
            lab = QLabel(f"Training is unavailable: {describe(exc)}\nLog: {log_path()}")
            lab.setWordWrap(True)
            return lab
        return TrainingPanel()

    def _dock(self, title: str, w: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        d = QDockWidget(title, self)
        d.setObjectName(f"dock_{title.lower()}")
        d.setWidget(w)
        self.addDockWidget(area, d)
        return d

    def _act(self, group: str, text: str, slot, keys: Any = None, checkable: bool = False,
             checked: bool = False) -> QAction:
        a = QAction(text, self)
        if keys is not None:
            seqs = keys if isinstance(keys, list) else [keys]
            a.setShortcuts([QKeySequence(k) for k in seqs])
        a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if checkable:
            a.setCheckable(True)
            a.setChecked(checked)
            a.toggled.connect(slot)
        else:
            a.triggered.connect(lambda _c=False: slot())
        self.addAction(a)
        self._actions.append((group, a))
        return a

    def _build_actions(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        f.addAction(self._act("File", "&New project…", self.new_project_dialog,
                              QKeySequence.StandardKey.New))
        f.addAction(self._act("File", "&Open project…", lambda: self.open_project_dialog(),
                              QKeySequence.StandardKey.Open))
        f.addAction(self._act("File", "Open the &demo project", self.open_demo))
        f.addSeparator()
        self.a_add_images = self._act("File", "&Add images…", self.add_images_dialog)
        self.a_export = self._act("File", "&Export landmarks…", self.export_dialog, "Ctrl+E")
        f.addAction(self.a_add_images)
        self.a_predict_new = self._act("File", "&Predict new images…",
                                       self.predict_new_images_dialog)
        self.a_predict_new.setToolTip("Add a folder of new patients' images and predict them "
                                      "with the newest trained model")
        f.addAction(self.a_predict_new)
        f.addAction(self.a_export)
        f.addSeparator()
        self.a_close = self._act("File", "&Close project", self.close_project)
        f.addAction(self.a_close)
        f.addAction(self._act("File", "&Quit", self.close, QKeySequence.StandardKey.Quit))

        e = mb.addMenu("&Edit")
        self.a_undo = self.undo_stack.createUndoAction(self, "&Undo")
        self.a_undo.setShortcuts(QKeySequence.StandardKey.Undo)
        self.a_redo = self.undo_stack.createRedoAction(self, "&Redo")
        redo = list(QKeySequence.keyBindings(QKeySequence.StandardKey.Redo))
        for extra in ("Ctrl+Shift+Z", "Ctrl+Y"):  # both, whatever the platform's habit
            if QKeySequence(extra) not in redo:
                redo.append(QKeySequence(extra))
        self.a_redo.setShortcuts(redo)
        self.a_undo.setProperty("helpText", "Undo")  # its text follows the last command
        self.a_redo.setProperty("helpText", "Redo")
        for a in (self.a_undo, self.a_redo):
            self.addAction(a)
            self._actions.append(("Edit", a))
            e.addAction(a)
        e.addSeparator()
        self.a_absent = self._act("Edit", "Mark landmark &absent", self.mark_absent, "X")
        self.a_clear = self._act("Edit", "&Clear landmark", self.clear_point,
                                 ["Delete", "Backspace"])
        self.a_exemplar = self._act("Edit", "Use this image as the e&xemplar", self.set_exemplar)
        self.a_template = self._act("Edit", "Edit the landmark &template…", self.edit_template)
        for a in (self.a_absent, self.a_clear, self.a_exemplar, self.a_template):
            e.addAction(a)

        v = mb.addMenu("&View")
        v.addAction(self._act("View", "&Fit image", self.canvas.fit, "F"))
        v.addAction(self._act("View", "&1:1 (one image pixel per screen pixel)",
                              self.canvas.one_to_one, "1"))
        v.addAction(self._act("View", "Zoom &in", lambda: self.canvas.zoom(1.25), ["+", "="]))
        v.addAction(self._act("View", "Zoom &out", lambda: self.canvas.zoom(0.8), "-"))
        v.addAction(self._act("View", "&Reset window/level", self.canvas.reset_levels, "R"))
        v.addSeparator()
        self.a_stage1 = self._act("View", "Show Stage I predictions", self._overlays_toggled,
                                  None, checkable=True)
        self.a_stage2 = self._act("View", "Show Stage II predictions", self._overlays_toggled,
                                  None, checkable=True)
        self.a_names = self._act("View", "Show landmark &names", self.canvas.set_labels_visible,
                                 "N", checkable=True, checked=True)
        self.a_hist = self._act("View", "Show the histogram (window/level)",
                                self.canvas.hist.setVisible, None, checkable=True, checked=True)
        for a in (self.a_stage1, self.a_stage2, self.a_names, self.a_hist):
            v.addAction(a)
        v.addSeparator()
        for d in (self.dock_images, self.dock_landmarks, self.dock_review, self.dock_training):
            v.addAction(d.toggleViewAction())

        n = mb.addMenu("&Navigate")
        n.addAction(self._act("Navigate", "&Next image", lambda: self.step_image(1), "PgDown"))
        n.addAction(self._act("Navigate", "&Previous image", lambda: self.step_image(-1),
                              "PgUp"))
        n.addAction(self._act("Navigate", "Next &landmark", lambda: self.step_landmark(1), "]"))
        n.addAction(self._act("Navigate", "Previous l&andmark", lambda: self.step_landmark(-1),
                              "["))

        r = mb.addMenu("&Review")
        r.addAction(self._act("Review", "&Next to review", self.review_next, "Space"))
        r.addAction(self._act("Review", "&Previous to review", self.review_previous,
                              "Shift+Space"))
        r.addAction(self._act("Review", "&Accept point", self.accept_point,
                              ["Return", "Enter"]))
        r.addAction(self._act("Review", "Accept &all points of the image", self.accept_image,
                              ["Shift+Return", "Shift+Enter"]))
        r.addAction(self._act("Review", "&Retrain with my corrections", self.retrain))

        t = mb.addMenu("&Tools")
        self.a_calibrate = self._act("Tools", "&Calibrate: click two points…",
                                     self.start_calibration, "C")
        t.addAction(self.a_calibrate)
        t.addAction(self._act("Tools", "Cancel the current tool",
                              lambda: self.canvas.set_mode("place"), "Escape"))
        t.addAction(self._act("Tools", "Run the classical &preview", self.run_preview))

        h = mb.addMenu("&Help")
        h.addAction(self._act("Help", "&Keyboard reference", self.show_help, "F1"))
        h.addAction(self._act("Help", "Where is the &log?", self.show_log_path))

    def _connect(self) -> None:
        d = self.doc
        d.image_changed.connect(self._image_changed)
        d.landmark_changed.connect(self._landmark_changed)
        d.points_changed.connect(self._points_changed)
        d.images_changed.connect(self._images_changed)
        d.error.connect(lambda title, exc: self._error(title, exc))
        # undo/redo can complete (or break) the exemplar too: same rule as a click
        self.undo_stack.indexChanged.connect(lambda _i: self._after_edit())
        self.loader.loaded.connect(self._image_loaded)
        self.loader.failed.connect(self._image_failed)
        self.canvas.place_requested.connect(self.place)
        self.canvas.point_moved.connect(self.move_point)
        self.canvas.landmark_clicked.connect(self.doc.set_landmark)
        self.canvas.cursor_info.connect(self.cursor_label.setText)
        self.canvas.calibration_measured.connect(self._calibration_measured)
        self.image_list.image_selected.connect(self.doc.set_image)
        self.template_panel.landmark_selected.connect(self.select_landmark)
        self.template_panel.absent_requested.connect(self.mark_absent)
        self.template_panel.clear_requested.connect(self.clear_point)
        self.review.goto.connect(self.goto)
        self.review.accept_point.connect(self.accept_point)
        self.review.accept_image.connect(self.accept_image)
        self.review.retrain.connect(self.retrain)
        self.review.next_step.connect(self.do_next_step)
        self.start.new_requested.connect(self.new_project_dialog)
        self.start.open_requested.connect(lambda p: self.open_project_dialog(p or None))
        self.start.demo_requested.connect(self.open_demo)
        self.suggester.progress.connect(self._suggestion_progress)
        self.suggester.ready.connect(self._suggestion_ready)
        self.suggester.failed.connect(self._suggestion_failed)
        self.exemplar_hint.use_requested.connect(self.use_suggested_exemplar)
        self.folder_watch.new_files.connect(self._new_files_appeared)
        self.new_images_banner.add_requested.connect(self.add_images)
        self.new_images_banner.dismissed.connect(self.folder_watch.ignore)
        self.stale_banner.rerun_requested.connect(self.rerun_stale)
        self.runs_panel.restore_requested.connect(self.use_run)
        tp = self.training
        if hasattr(tp, "about_to_start"):
            tp.about_to_start.connect(self._job_starting)
        if hasattr(tp, "finished"):
            tp.started.connect(self._training_started)
            tp.finished.connect(self._training_finished)
            tp.failed.connect(self._training_failed)
            if hasattr(tp, "cancelled"):
                tp.cancelled.connect(self._training_cancelled)

    # ------------------------------------------------------------------ settings
    def _restore_geometry(self) -> None:
        g = settings.get_value("window/geometry")
        s = settings.get_value("window/state")
        if isinstance(g, QByteArray) and not g.isEmpty():
            self.restoreGeometry(g)
        restored = isinstance(s, QByteArray) and not s.isEmpty() and self.restoreState(s)
        for key, a in self._view_toggles().items():
            v = settings.get_value(f"view/{key}")
            if v is not None:  # INI files give "true"/"false" strings back
                a.setChecked(str(v).lower() in ("true", "1"))
        if not restored:  # first run: the image gets the room, the docks what they need
            self.resizeDocks([self.dock_images, self.dock_landmarks], [210, 360],
                             Qt.Orientation.Horizontal)

    def _view_toggles(self) -> dict[str, QAction]:
        return {"stage1": self.a_stage1, "stage2": self.a_stage2, "names": self.a_names,
                "histogram": self.a_hist}

    def closeEvent(self, event: QCloseEvent) -> None:
        for key, a in self._view_toggles().items():
            settings.set_value(f"view/{key}", a.isChecked())
        settings.set_value("window/geometry", self.saveGeometry())
        settings.set_value("window/state", self.saveState())
        self.suggester.cancel()
        # closing can take seconds (the job's checkpoint, decodes in flight): say so, and show
        # a busy cursor, before the window stops answering
        running = hasattr(self.training, "shutdown") and self.training.is_running()
        self.statusBar().showMessage("Closing: stopping the background job (it saves a "
                                     "checkpoint; Resume continues it)…" if running else
                                     "Closing…")
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            # paint the message now (the waits below block); repaint, not processEvents: a job's
            # end delivered here could start the next job of a chain while closing
            self.statusBar().repaint()
            if running:
                self.training.shutdown(5.0)
            self.loader.clear()
            self.image_list.model.loader.clear()
            QThreadPool.globalInstance().waitForDone(3000)  # no decode may outlive receivers
            self._remember_image()
            if self.doc.project is not None:
                self.doc.set_project(None)
        finally:
            QApplication.restoreOverrideCursor()
        super().closeEvent(event)

    # ------------------------------------------------------------------ project
    def _show_workspace(self, on: bool) -> None:
        self.stack.setCurrentWidget(self.workspace if on else self.start)
        for d in (self.dock_images, self.dock_landmarks, self.dock_review, self.dock_training):
            d.setVisible(on)
        for a in (self.a_add_images, self.a_export, self.a_close, self.a_exemplar,
                  self.a_template, self.a_calibrate):
            a.setEnabled(on)
        if not on:
            self.start.refresh()

    def _error(self, title: str, exc: BaseException | str) -> None:
        msg = exc if isinstance(exc, str) else describe(exc)
        self.last_error = f"{title}: {msg}"
        self.statusBar().showMessage(self.last_error, 15000)
        if isinstance(exc, str):
            show_error(self, title, msg)
        else:
            report_exception(self, title, exc)

    def open_project(self, path: str | Path) -> bool:
        """Open a .lmk file; errors (missing, corrupt, newer version) are shown, nothing lost."""
        from lmk_studio.core.store import Project

        try:
            proj = Project.open(Path(path))
        except (LmkError, OSError) as exc:
            self._error(f"Could not open {Path(path).name}", exc)
            return False
        self._set_project(proj)
        return True

    def create_project(self, project_path: Path, template: Any, images_dir: Path) -> bool:
        """The start screen's "new project" path (tests drive it directly)."""
        from lmk_studio.core.store import Project, remove_project_files

        try:
            proj = Project.create(Path(project_path), template, images_dir=Path(images_dir))
        except (LmkError, OSError) as exc:
            self._error("Could not create the project", exc)
            return False
        self.last_faults = list(getattr(proj, "last_faults", []) or [])
        if not proj.images():
            # nothing to annotate: no project file, no Recent entry, one dialog that says why
            proj.close()
            remove_project_files(project_path)
            self._no_readable_images(Path(images_dir), self.last_faults)
            return False
        self._set_project(proj)
        n = len(self.doc.records())
        if self.last_faults:
            lines = "\n".join(f"• {p}: {why}" for p, why in self.last_faults[:20])
            more = len(self.last_faults) - 20
            if more > 0:
                lines += f"\n… and {more} more (see the log)"
            for p, why in self.last_faults:
                log.warning("skipped %s: %s", p, why)
            show_error(self, "Some images were skipped",
                       f"{plural(n, 'image was', 'images were')} added; "
                       f"{plural(len(self.last_faults), 'file')} could not be read and "
                       f"{'was' if len(self.last_faults) == 1 else 'were'} skipped:\n{lines}")
        return True

    def _no_readable_images(self, folder: Path, faults: list[tuple[Path, str]]) -> None:
        """One dialog: the folder had no image the app can read, with each file and why."""
        for p, why in faults:
            log.warning("skipped %s: %s", p, why)
        if faults:
            lines = "\n".join(f"• {Path(p).name}: {why}" for p, why in faults[:20])
            more = len(faults) - 20
            if more > 0:
                lines += f"\n… and {more} more (see the log)"
            msg = (f"{folder}: none of its {len(faults)} image file"
                   f"{'s' if len(faults) != 1 else ''} could be read, so no project was made:"
                   f"\n{lines}")
        else:
            msg = (f"{folder}: no image files in this folder (PNG, JPEG, TIFF, BMP or DICOM), "
                   "so no project was made. Pick the folder that holds the X-rays.")
        self.last_error = f"No readable images: {msg}"
        self.statusBar().showMessage("No project was made: no readable image.", 15000)
        show_error(self, "No readable images", msg)

    def _preload_engine(self) -> None:
        """Import the stage modules (torch, kornia) in a background thread while the user
        annotates: starting a job checks its presets with them, and a first import on the GUI
        thread froze the window for most of a second (measured 0.76-0.92 s)."""
        if getattr(self, "_preloading", None) is not None:
            return

        def work() -> None:
            for name in ("lmk_studio.engine.jobs", "lmk_studio.engine.stage1",
                         "lmk_studio.engine.stage2"):
                try:
                    importlib.import_module(name)
                except Exception:  # logged; the job start reports it to the user in words
                    log.exception("could not preload %s", name)

        self._preloading = threading.Thread(target=work, name="lmk-preload", daemon=True)
        self._preloading.start()

    def _set_project(self, proj: Any) -> None:
        self._preload_engine()
        self._remember_image()
        self.undo_stack.clear()
        self.loader.clear()
        self._pred_cache.clear()
        self.shown_image_id = None
        self.canvas.set_image(None)
        self.doc.set_project(proj)
        t = proj.template
        self.canvas.set_template(t.names, [lm.color for lm in t.landmarks])
        self._tell_training()
        settings.add_recent_project(Path(proj.path))
        self.setWindowTitle(f"{Path(proj.path).name} — lmk_studio")
        self._show_workspace(True)
        self._exemplar_was_complete = self.doc.exemplar_complete()
        ids = [r.id for r in self.doc.records()]
        last = proj.get_meta("gui.last_image")
        first = last if last in ids else (self.doc.exemplar_id or (ids[0] if ids else None))
        self.doc.set_image(first)
        self._update_progress()
        if not ids:
            self.statusBar().showMessage("This project has no images yet: File ▸ Add images.")
        self._suggest_exemplar()
        self._watch_folders()
        self._chain.clear()
        self._auto_rerun_of = None
        self.check_stale()

    def _tell_training(self) -> None:
        """The training panel's project, image count and typical size (its preset default and
        time estimate follow them)."""
        if not hasattr(self.training, "set_project") or self.doc.project is None:
            return
        recs = [r for r in self.doc.records() if not r.missing]
        sides = sorted(max(r.width, r.height) for r in recs if r.width and r.height)
        self.training.set_project(self.doc.project.path, n_images=len(recs),
                                  longest_side=sides[len(sides) // 2] if sides else None,
                                  opened=self.doc.project)

    def _remember_image(self) -> None:
        if self.doc.project is not None and self.doc.image_id is not None:
            try:
                self.doc.project.set_meta("gui.last_image", self.doc.image_id)
            except (LmkError, OSError) as exc:  # a read-only project still closes cleanly
                log.warning("could not remember the last image: %s", exc)

    def close_project(self) -> None:
        self.suggester.cancel()
        self.exemplar_hint.dismiss()
        self.folder_watch.clear()
        self.new_images_banner.hide()
        self.stale_banner.clear()
        self.runs_panel.set_summaries([])
        self._chain.clear()
        self._pending_predict.clear()
        self._remember_image()
        self.undo_stack.clear()
        self.loader.clear()
        self.canvas.set_image(None)
        self.doc.set_project(None)
        if hasattr(self.training, "set_project"):
            self.training.set_project(None)
        self.setWindowTitle("lmk_studio")
        self._show_workspace(False)

    def new_project_dialog(self) -> None:
        dlg = NewProjectDialog(self)
        if dlg.exec() != NewProjectDialog.DialogCode.Accepted:
            return
        images, template, path = dlg.values()
        self.create_project(path, template, images)

    # ------------------------------------------------------------------ exemplar suggestion
    def _suggest_exemplar(self) -> None:
        """While a project has no exemplar, rank its images in the background and offer the
        most typical one in the banner (the user may still annotate any image)."""
        self.suggester.cancel()
        self.exemplar_hint.dismiss()
        if not self.auto_suggest or self.doc.project is None or self.doc.exemplar_id is not None:
            return
        recs = [r for r in self.doc.records() if not r.missing]
        if len(recs) < MIN_IMAGES:
            return
        self.exemplar_hint.show_computing(0, len(recs))
        self.suggester.start([r.path for r in recs], [r.id for r in recs])

    def _suggestion_progress(self, done: int, total: int) -> None:
        if self.exemplar_hint.isVisible() and self.exemplar_hint.candidate is None:
            self.exemplar_hint.show_computing(done, total)

    def _suggestion_ready(self, ranking: Any) -> None:
        best = ranking.best
        if self.doc.project is None or self.doc.exemplar_id is not None or best is None:
            self.exemplar_hint.dismiss()
            return
        for p, why in ranking.skipped:
            log.info("exemplar suggestion skipped %s: %s", p, why)
        log.info("suggested exemplar %s (score %.3f) among %d images in %.1f s", best.name,
                 best.score, len(ranking.candidates), ranking.seconds)
        self.exemplar_hint.show_suggestion(best, len(ranking.candidates))

    def _suggestion_failed(self, message: str) -> None:
        self.exemplar_hint.dismiss()
        self.statusBar().showMessage(f"No exemplar suggestion: {message}", 10000)

    def use_suggested_exemplar(self, image_id: int) -> None:
        """Show the suggested image; its first landmark will make it the exemplar."""
        if self.doc.project is None or image_id not in {r.id for r in self.doc.records()}:
            return
        self.doc.set_image(image_id)
        self.exemplar_hint.show_used()
        self.statusBar().showMessage(f"{self.doc.record(image_id).name}: place its landmarks "
                                     "to make it the exemplar.", 10000)

    def open_project_dialog(self, path: str | None = None) -> None:
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Open a project", "",
                                                  "lmk_studio project (*.lmk);;All files (*)")
        if path:
            self.open_project(path)

    def open_demo(self) -> bool:
        self.statusBar().showMessage("Preparing the demo project…")
        try:
            path = ensure_demo_project()
        except (LmkError, OSError) as exc:
            self._error("Could not write the demo project", exc)
            return False
        return self.open_project(path)

    def add_images_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add images", "")
        if files:
            self.add_images([Path(f) for f in files])

    def add_images(self, paths: list[Path]) -> None:
        """Add image files; new ones are predicted with the newest trained model at once."""
        if self.doc.project is None:
            return
        try:
            added = self.doc.project.add_images(paths)
        except (LmkError, OSError) as exc:
            self._error("Could not add the images", exc)
            return
        faults = list(getattr(self.doc.project, "last_faults", []) or [])
        self.doc.reload_images()
        self._tell_training()
        self.folder_watch.set_known(r.path for r in self.doc.records())
        self.folder_watch.ignore(p for p, _ in faults)  # refused once: not offered again
        msg = f"Added {plural(len(added), 'image')}."
        if faults:
            show_error(self, "Some images were skipped", msg + "\n" + "\n".join(
                f"• {p}: {why}" for p, why in faults[:20]))
        self.statusBar().showMessage(msg, 8000)
        if added:
            self.predict_images([r.id for r in added])

    def predict_new_images_dialog(self) -> None:
        if self.doc.project is None:
            self.statusBar().showMessage("Open a project first.", 8000)
            return
        folder = QFileDialog.getExistingDirectory(self, "Folder of new images", "")
        if not folder:
            return
        from lmk_studio.core.images import list_images

        try:
            paths = list_images(folder)
        except LmkError as exc:
            self._error("Could not read the folder", exc)
            return
        if not paths:
            self._error("No images found", f"{folder}: no supported images in this folder")
            return
        known = {Path(r.path).resolve() for r in self.doc.records()}
        new = [p for p in paths if p.resolve() not in known]
        if not new:
            self.statusBar().showMessage(f"Every image of {folder} is already in the project.",
                                         8000)
            return
        self.add_images(new)

    def _method_words(self) -> tuple[str | None, str]:
        from lmk_studio.engine.jobs import JOBS

        kinds = {r.kind for r in self.doc.project.runs() if r.status == "finished"}
        job = job_for_new_images(kinds)
        return job, (JOBS[job].split(":")[0].lower() if job else "after the exemplar is done")

    def predict_images(self, ids: list[int]) -> None:
        """Predict these images with the newest trained method (Stage II > Stage I > preview),
        on those images only; queued behind a running job."""
        tp = self.training
        if not ids or self.doc.project is None or not hasattr(tp, "start"):
            return
        job, words = self._method_words()
        if job is None or (job == "classical" and not self.doc.exemplar_complete()):
            self.statusBar().showMessage("The new images will be predicted once the exemplar "
                                         "is complete.", 10000)
            return
        if tp.is_running():
            self._pending_predict |= set(ids)
            self.statusBar().showMessage(f"{len(ids)} new image(s) will be predicted when the "
                                         "running job finishes.", 10000)
            return
        if tp.start(job, images=sorted(ids)):
            self.statusBar().showMessage(f"Predicting {len(ids)} new image(s): {words}.", 10000)

    def _start_pending_predict(self) -> None:
        if self._pending_predict and self.doc.project is not None:
            known = {r.id for r in self.doc.records()}
            ids, self._pending_predict = sorted(self._pending_predict & known), set()
            self.predict_images(ids)

    def _watch_folders(self) -> None:
        recs = self.doc.records()
        self.folder_watch.watch({Path(r.path).parent for r in recs}, [r.path for r in recs])

    def _new_files_appeared(self, paths: list) -> None:
        if self.doc.project is None:
            return
        _job, words = self._method_words()
        self.new_images_banner.offer([Path(p) for p in paths], words)

    # ------------------------------------------------------------------ image display
    def _image_changed(self, image_id: int) -> None:
        self.update_next_step()  # "Go to the exemplar" only away from it
        if image_id < 0 or self.doc.project is None:
            self.canvas.set_image(None)
            self.canvas.set_points([])
            return
        # the previous image's markers go at once: nothing stale can be dragged meanwhile
        self.canvas.set_points([])
        rec = self.doc.record(image_id)
        if rec.missing:
            self.shown_image_id = None
            self.canvas.set_image(None)
            self.statusBar().showMessage(f"{rec.path}: the file is missing (moved or deleted); "
                                         "its landmarks are kept.", 15000)
            return
        self.loader.request(image_id, rec.path)
        ids = self.image_list.visible_ids()
        if image_id in ids:  # decode the next image while the user works on this one
            k = ids.index(image_id)
            if k + 1 < len(ids):
                nxt = self.doc.record(ids[k + 1])
                if not nxt.missing:
                    self.loader.prefetch(nxt.id, nxt.path)

    def _image_loaded(self, image_id: int, img: Any) -> None:
        if image_id != self.doc.image_id:
            return
        window = getattr(img.meta, "window", None)
        levels = default_levels(img.pixels, window)
        self.canvas.set_image(img.pixels, levels, self.doc.spacing(image_id),
                              fit=self._pending_focus is None)
        self.shown_image_id = image_id
        self._redraw_points()
        if self._pending_focus is not None:
            self._focus_landmark(self._pending_focus)
            self._pending_focus = None
        rec = self.doc.record(image_id)
        sp = rec.spacing
        extra = f", {sp[1]:.4g} mm/px ({rec.spacing_source})" if sp else ", no pixel spacing"
        conv = getattr(img.meta, "conversion", None)
        if conv:  # a colour file (photographed film, secondary capture) shown as grey: say how
            extra += f"; colour shown as grey ({conv})"
        self.statusBar().showMessage(f"{rec.name}: {rec.width} x {rec.height} px{extra}", 6000)

    def _image_failed(self, image_id: int, message: str) -> None:
        if image_id != self.doc.image_id:
            return
        self.shown_image_id = None
        self.canvas.set_image(None)
        self.canvas.set_points([])
        self.image_list.model.mark_unreadable(image_id, message)
        self.last_error = message
        if not self.doc.record(image_id).path.exists():
            # gone since the project was opened: let the store and the list say "missing"
            QTimer.singleShot(0, self.doc.refresh_files)
        self.statusBar().showMessage(f"Could not show this image: {message}", 20000)
        log.warning("could not show image %s: %s", image_id, message)

    def _redraw_points(self) -> None:
        if self.shown_image_id is None or self.shown_image_id != self.doc.image_id:
            return
        self.canvas.set_points(self.doc.points(), self.doc.landmark)
        self._update_overlays()

    def _points_changed(self, image_id: int) -> None:
        if image_id in (-1, self.doc.image_id):
            self._redraw_points()
        self._update_progress()

    def _images_changed(self) -> None:
        if self.doc.image_id is not None:
            self.canvas.spacing = self.doc.spacing()
        self._update_progress()

    def _landmark_changed(self, index: int) -> None:
        self._redraw_points()
        if self.doc.image_id is not None:
            self.review.set_cursor(self.doc.image_id, index)

    def _update_progress(self) -> None:
        if self.doc.project is None:
            self.progress_label.clear()
            return
        s = self.doc.review_summary()
        ex = self.doc.exemplar_id
        if ex is None:
            txt = "No exemplar yet: place the landmarks on one image"
        else:
            pts = self.doc.points(ex)
            done = sum(p.status is not Status.UNLABELLED for p in pts)
            txt = f"Exemplar {done}/{len(pts)}"
        if s.points_total:
            txt += (f"  ·  reviewed {s.images_reviewed}/{s.images_total} images, "
                    f"{s.points_reviewed}/{s.points_total} landmarks")
        self.progress_label.setText(txt)
        self.update_next_step()

    def update_next_step(self) -> None:
        """The Review panel's hint and button: always one visible next step."""
        set_step = self.review.set_next_step
        proj = self.doc.project
        if proj is None:
            set_step("")
            return
        ex = self.doc.exemplar_id
        tp = self.training
        if ex is None:
            set_step("Place the landmarks on one image: it becomes the exemplar (the one image "
                     "you annotate by hand).")
            return
        if not self.doc.exemplar_complete():
            pts = self.doc.points(ex)
            done = sum(p.status is not Status.UNLABELLED for p in pts)
            set_step(f"Finish the exemplar ({done} of {len(pts)} landmarks): place each one, or "
                     "mark it absent (X).",
                     None if self.doc.image_id == ex else "Go to the exemplar", "exemplar")
            return
        if hasattr(tp, "is_running") and tp.is_running():
            set_step("A job is running in the Training panel; its points appear here when it "
                     "ends.")
            return
        s = self.doc.review_summary()
        if s.points_total == 0:
            set_step("No predictions yet: the preview predicts every image in seconds.",
                     "Run the preview", "preview")
            return
        if self.review.items:
            trained = any(r.kind in ("stage1", "stage2") and r.status == "finished"
                          for r in proj.runs())
            if not trained:
                set_step("Press Space to review, least confident first. The preview is rough: "
                         "train for better accuracy.", "Train for better accuracy…", "train")
            else:
                set_step("Press Space to review, least confident first (Return accepts, drag "
                         "corrects).", "Review the next point (Space)", "review")
            return
        set_step("Every prediction is reviewed: export the landmarks.", "Export…", "export")

    def do_next_step(self, key: str) -> None:
        """The Review panel's next-step button."""
        if key == "preview":
            self.run_preview()
        elif key == "train":
            tp = self.training
            self.dock_training.show()
            self.dock_training.raise_()
            if hasattr(tp, "job_combo"):
                tp.job_combo.setCurrentIndex(tp.job_combo.findData("all"))
            self.statusBar().showMessage("Training: check the preset and its time estimate, "
                                         "then Start.", 10000)
        elif key == "review":
            self.review_next()
        elif key == "export":
            self.export_dialog()
        elif key == "exemplar" and self.doc.exemplar_id is not None:
            self.doc.set_image(self.doc.exemplar_id)

    def _overlays_toggled(self, _on: bool = False) -> None:
        self._update_overlays()

    def _latest_run(self, kinds: tuple[str, ...]) -> int | None:
        runs = [r for r in self.doc.project.runs() if r.kind in kinds and r.status == "finished"]
        return runs[-1].id if runs else None

    def _update_overlays(self) -> None:
        iid = self.doc.image_id
        for key, (kinds, color, symbol, _words) in STAGE_OVERLAYS.items():
            on = (self.a_stage1 if key == "stage1" else self.a_stage2).isChecked()
            pts = None
            if on and iid is not None and self.doc.project is not None:
                rid = self._latest_run(kinds)
                if rid is not None:
                    if rid not in self._pred_cache:
                        self._pred_cache[rid] = self.doc.project.predictions(rid)
                    row = self._pred_cache[rid].get(iid)
                    if row:
                        pts = np.array([[p.x, p.y] if p.placed else [np.nan, np.nan]
                                        for p in row], dtype=float)
            self.canvas.set_overlay(key, pts, color, symbol)

    # ------------------------------------------------------------------ navigation
    def step_image(self, delta: int) -> None:
        ids = self.image_list.visible_ids()
        if not ids:
            return
        cur = self.doc.image_id
        k = ids.index(cur) + delta if cur in ids else 0
        self.doc.set_image(ids[max(0, min(len(ids) - 1, k))])

    def step_landmark(self, delta: int) -> None:
        n = self.doc.n_landmarks
        if n:
            self.select_landmark((self.doc.landmark + delta) % n)

    def select_landmark(self, index: int) -> None:
        self.doc.set_landmark(index)
        self._focus_landmark(index, zoom=False)

    def _focus_landmark(self, index: int, zoom: bool = False) -> None:
        pts = self.doc.points()
        if not (0 <= index < len(pts)) or not pts[index].placed or self.canvas.pixels is None:
            return
        p = pts[index]
        if zoom:
            h, w = self.canvas.pixels.shape[:2]
            span = max(h, w) / 3.0
            self.canvas.vb.setRange(QRectF(p.x - span / 2, p.y - span / 2, span, span),
                                    padding=0)
        else:
            self.canvas.center_on(p.x, p.y)

    def goto(self, image_id: int, index: int) -> None:
        """Show a landmark of an image (from the review queue): zoomed around it."""
        if image_id != self.doc.image_id:
            self._pending_focus = index
            self.doc.set_image(image_id)
            self.doc.set_landmark(index)
        else:
            self.doc.set_landmark(index)
            self._focus_landmark(index, zoom=True)

    def review_next(self) -> None:
        if self.review.next() is None:
            self.statusBar().showMessage("Nothing left to review.", 5000)

    def review_previous(self) -> None:
        if self.review.previous() is None:
            self.statusBar().showMessage("Nothing left to review.", 5000)

    # ------------------------------------------------------------------ edits
    def _push(self, cmd: Any) -> bool:
        self.undo_stack.push(cmd)
        return getattr(cmd, "error", None) is None

    def place(self, x: float, y: float) -> None:
        iid = self.doc.image_id
        if iid is None or self.doc.project is None or self.shown_image_id != iid:
            return
        idx = self.doc.landmark
        cur = self.doc.points()[idx]
        if cur.status.is_trusted:
            # a stray click must not move a point a human stands behind: that is a drag
            self.statusBar().showMessage(
                f"{self.doc.names()[idx]} is already placed: drag it to move it, Del clears "
                "it, or pick another landmark in the list.", 6000)
            return
        if not self._push(PlacePoint(self.doc, iid, idx, x, y)):
            return
        nxt = self.doc.next_unplaced(idx)
        if nxt is not None:
            self.doc.set_landmark(nxt)
        else:
            self.doc.landmark_changed.emit(self.doc.landmark)
        self._after_edit()

    def move_point(self, index: int, x: float, y: float) -> None:
        iid = self.doc.image_id
        if iid is None or self.shown_image_id != iid:
            self._redraw_points()  # a drag that ended on an image being replaced counts for none
            return
        self._push(MovePoint(self.doc, iid, index, x, y))
        self.doc.set_landmark(index)
        self._after_edit()

    def mark_absent(self) -> None:
        iid = self.doc.image_id
        if iid is None:
            return
        idx = self.doc.landmark
        if self.doc.points()[idx].status is Status.ABSENT:
            return
        if self.doc.exemplar_id is None:
            self.statusBar().showMessage("Place a landmark first: the image you annotate "
                                         "first becomes the exemplar.", 8000)
            return
        if not self._push(MarkAbsent(self.doc, iid, idx)):
            return
        nxt = self.doc.next_unplaced(idx)
        if nxt is not None:
            self.doc.set_landmark(nxt)
        self._after_edit()

    def clear_point(self) -> None:
        iid = self.doc.image_id
        if iid is None:
            return
        idx = self.doc.landmark
        if self.doc.points()[idx].status is Status.UNLABELLED:
            return
        self._push(ClearPoint(self.doc, iid, idx))
        self._after_edit()

    def _typing(self) -> bool:
        """Return in a text field must not accept a landmark (line edits don't claim it)."""
        from PySide6.QtWidgets import QApplication

        return _is_text_input(QApplication.focusWidget())

    def _review_key(self, ev: Any) -> Any:
        """The review action a key press means (Space, Shift+Space, Return, Shift+Return)."""
        key, mods = ev.key(), ev.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        shift = mods == Qt.KeyboardModifier.ShiftModifier
        if mods not in (Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.ShiftModifier):
            return None
        if key == Qt.Key.Key_Space:
            return self.review_previous if shift else self.review_next
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            return self.accept_image if shift else self.accept_point
        return None

    def eventFilter(self, obj: QObject, ev: QEvent) -> bool:  # noqa: N802 - Qt's name
        """Review keys from every panel: a list, table or combo box with the focus takes Space
        and Return for itself (select, open), so the window's shortcuts never saw them after a
        click in the Images list. Text fields keep them for typing, and a focused button keeps
        Space/Return to be pressed from the keyboard."""
        t = ev.type()
        if (t in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress) and obj.isWidgetType()
                and self.doc.project is not None and obj.window() is self
                and not _is_text_input(obj) and not isinstance(obj, QAbstractButton)):
            action = self._review_key(ev)
            if action is not None:
                if t == QEvent.Type.KeyPress:
                    if not ev.isAutoRepeat() or action in (self.review_next,
                                                           self.review_previous):
                        action()
                else:
                    ev.accept()  # the key press comes to this filter, not the shortcut map
                return True
        return super().eventFilter(obj, ev)

    def accept_point(self) -> None:
        iid = self.doc.image_id
        if iid is None or self._typing():
            return
        idx = self.doc.landmark
        if self.doc.points()[idx].status is not Status.PREDICTED:
            self.review_next()
            return
        self._push(AcceptPoints(self.doc, iid, [idx]))
        self.review_next()

    def accept_image(self) -> None:
        iid = self.doc.image_id
        if iid is None or self._typing():
            return
        idx = [p.index for p in self.doc.points() if p.status is Status.PREDICTED]
        if idx:
            self._push(AcceptPoints(self.doc, iid, idx))
        self.review_next()

    def set_exemplar(self) -> None:
        iid = self.doc.image_id
        if iid is None or iid == self.doc.exemplar_id:
            return
        self._push(SetExemplar(self.doc, iid))
        self._exemplar_was_complete = self.doc.exemplar_complete()
        self._update_progress()

    def _after_edit(self) -> None:
        """Start the instant classical preview when the exemplar has just become complete."""
        if self.doc.project is None:
            return
        if self.doc.exemplar_id is not None and self.exemplar_hint.isVisible():
            self.suggester.cancel()  # the choice is made: the suggestion has done its part
            self.exemplar_hint.dismiss()
        complete = self.doc.exemplar_complete()
        first = history.active_run(self.doc.all_points(), self.doc.exemplar_id) is None
        if complete and not self._exemplar_was_complete and self.auto_preview and first:
            self.run_preview(auto=True)  # the first predictions: at once
        self._exemplar_was_complete = complete
        self._stale_timer.start()  # later edits: are the predictions still in step? (debounced)

    def edit_template(self) -> None:
        proj = self.doc.project
        if proj is None:
            return
        ed = TemplateEditor(proj.template, self)
        if ed.exec() != TemplateEditor.DialogCode.Accepted:
            return
        try:
            proj.set_template(ed.template())
        except (LmkError, OSError) as exc:
            self._error("Could not change the template", exc)
            return
        self._set_project(proj)

    # ------------------------------------------------------------------ calibration
    def start_calibration(self) -> None:
        if self.canvas.pixels is None:
            return
        self.canvas.set_mode("calibrate")
        self.statusBar().showMessage("Calibration: click two points a known distance apart "
                                     "(Esc cancels).")

    def ask_distance_mm(self, dist_px: float) -> float | None:
        """Ask the real distance; tests replace this method."""
        mm, ok = QInputDialog.getDouble(
            self, "Calibration", f"The two points are {dist_px:.1f} px apart.\n"
            "Their real distance in mm:", 10.0, 0.001, 100000.0, 3)
        return mm if ok else None

    def _calibration_measured(self, x0: float, y0: float, x1: float, y1: float) -> None:
        dist = math.hypot(x1 - x0, y1 - y0)
        QTimer.singleShot(0, lambda: self._finish_calibration(dist))

    def _finish_calibration(self, dist_px: float) -> None:
        self.canvas.set_mode("place")
        if dist_px < 1.0:
            self.statusBar().showMessage("Calibration: the two points are too close.", 8000)
            return
        mm = self.ask_distance_mm(dist_px)
        if mm is None or mm <= 0:
            self.statusBar().showMessage("Calibration cancelled.", 5000)
            return
        proj = self.doc.project
        spacing = mm / dist_px
        try:
            old = proj.calibration(None)
        except (LmkError, OSError) as exc:
            self._error("Could not calibrate", exc)
            return
        if self._push(Calibrate(self.doc, spacing, None, old)):
            rec = self.doc.record(self.doc.image_id)
            note = ""
            if rec.spacing_source and not str(rec.spacing_source).startswith("calibration"):
                note = (f" This image keeps the spacing of its file ({rec.spacing_source}).")
            self.canvas.spacing = self.doc.spacing()
            self.statusBar().showMessage(f"Calibrated: {spacing:.4f} mm/px for the images "
                                         f"without a spacing in their file.{note}", 12000)

    # ------------------------------------------------------------------ training
    def run_preview(self, auto: bool = False) -> None:
        tp = self.training
        if not hasattr(tp, "start") or self.doc.project is None:
            return
        if not self.doc.exemplar_complete():
            if not auto:
                self.statusBar().showMessage("Place (or mark absent) every landmark of the "
                                             "exemplar first.", 8000)
            return
        if tp.is_running():
            if not auto:
                self.statusBar().showMessage("A job is running; the preview waits for it.", 8000)
            return
        if tp.start("classical"):
            self.statusBar().showMessage("Exemplar complete: computing the instant preview on "
                                         "the other images…", 10000)

    def retrain(self) -> None:
        """"Retrain with my corrections": every trusted image becomes an exemplar, so the chain
        re-runs what the corrections changed (fused preview, Stage I, Stage II: engine.jobs
        plans it), after saying what it will do and roughly how long it takes. A Stage II preset
        file in the panel means the user wants Stage II alone."""
        tp = self.training
        if not hasattr(tp, "start") or self.doc.project is None:
            return
        preset = tp.selected_preset() if hasattr(tp, "selected_preset") else None
        if preset is not None and str(preset).lower().endswith(".json"):
            self.dock_training.raise_()
            tp.start("stage2")
            return
        from lmk_studio.engine.jobs import plan_job

        try:
            plan = plan_job(self.doc.project, "all", preset)
        except (LmkError, OSError) as exc:
            self._error("Cannot retrain", exc)
            return
        if not self.confirm_plan(plan["words"]):
            return
        self.dock_training.raise_()
        tp.start("all")

    def confirm_plan(self, words: str) -> bool:
        """Ask before a job that may take minutes (tests replace this)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Retrain with my corrections",
                          words + "\n\nStart now? You can keep reviewing while it runs.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                          self)
        box.setDefaultButton(QMessageBox.StandardButton.Yes)
        return box.exec() == QMessageBox.StandardButton.Yes

    def _training_started(self, job: str) -> None:
        self.statusBar().showMessage(f"Background job started: {job}", 5000)
        self.update_next_step()

    def _job_starting(self, spec: dict) -> None:
        """Remember what the job starts from (the exemplar, the reviewed points) and which run
        the user sees now: the finished runs are checked against both."""
        if self.doc.project is None:
            return
        QTimer.singleShot(0, self.update_next_step)  # "a job is running", once it is
        pts = self.doc.all_points()
        ex = self.doc.exemplar_id
        self._job_inputs = history.fingerprint(pts, ex)
        self._job_subset = spec.get("images") is not None
        if not self._in_chain:
            self._active_before = history.active_run(pts, ex)
            self._before_stale = self._stale_reason(self._active_before) is not None

    def _store_inputs(self, run_ids: list) -> None:
        proj = self.doc.project
        if proj is None or self._job_inputs is None or not run_ids:
            return
        try:
            inputs = dict(proj.get_meta(history.INPUTS_KEY, {}) or {})
            kinds = {r.id: r.kind for r in proj.runs()}
            for rid in run_ids:
                fp = dict(self._job_inputs)
                if kinds.get(int(rid)) not in history.LEARNS_FROM_TRUSTED:
                    fp["trusted"] = {}  # only Stage II learns from them: keep the file small
                inputs[str(int(rid))] = fp
            proj.set_meta(history.INPUTS_KEY, inputs)
        except (LmkError, OSError) as exc:  # read-only project: staleness is then unknown
            log.warning("could not record what runs %s started from: %s", run_ids, exc)
        self._job_inputs = None

    def _stale_reason(self, run_id: int | None) -> str | None:
        """Why the run's points are out of date with the exemplar / reviewed points, or None.
        A run the app did not start (the CLI, an older version) is taken as in step when first
        seen: its inputs are recorded then."""
        proj = self.doc.project
        if proj is None or run_id is None:
            return None
        pts = self.doc.all_points()
        ex = self.doc.exemplar_id
        try:
            inputs = dict(proj.get_meta(history.INPUTS_KEY, {}) or {})
            run = proj.run(run_id)
        except (LmkError, OSError) as exc:
            log.warning("could not read the runs: %s", exc)
            return None
        then = inputs.get(str(run_id))
        if not isinstance(then, dict):
            inputs[str(run_id)] = history.fingerprint(pts, ex)
            try:
                proj.set_meta(history.INPUTS_KEY, inputs)
            except (LmkError, OSError) as exc:
                log.info("could not record the inputs of run %s: %s", run_id, exc)
            return None
        return history.stale_reason(then, pts, ex, self.doc.names(),
                                    run.kind in history.LEARNS_FROM_TRUSTED)

    def check_stale(self) -> None:
        """After edits (debounced) and after jobs: are the current predictions older than the
        exemplar? The preview re-runs by itself; anything trained waits for a click (banner)."""
        self._stale_timer.stop()
        proj = self.doc.project
        self.refresh_runs()
        if proj is None:
            self.stale_banner.clear()
            return
        rid = history.active_run(self.doc.all_points(), self.doc.exemplar_id)
        reason = self._stale_reason(rid)
        if reason is None:
            self.stale_banner.clear()
            self._auto_rerun_of = None
            return
        run = proj.run(rid)
        tp = self.training
        busy = hasattr(tp, "is_running") and tp.is_running()
        complete = self.doc.exemplar_complete()
        if (run.kind == "classical" and self.auto_preview and complete and not busy
                and self._auto_rerun_of != rid):
            self._auto_rerun_of = rid  # once per run: a preview that writes nothing cannot loop
            self.stale_banner.clear()
            if hasattr(tp, "start") and tp.start("classical"):
                self.statusBar().showMessage(f"The exemplar changed ({reason}): updating the "
                                             "preview…", 10000)
            return
        words = f"run {rid}, {history.method_words(run)}"
        chain = self._rerun_chain(run.kind)
        steps = " → ".join(history.METHOD_WORDS.get(j, j) for j, _ in chain)
        self.stale_banner.show_stale(words, reason, complete and hasattr(tp, "start"),
                                     f"Re-run ({steps}) to update them", busy)

    def _rerun_chain(self, kind: str) -> list[tuple[str, str | None]]:
        """The jobs that redo the active run from the current exemplar: the preview, then the
        stages it was trained through, each with the preset it used (if bundled)."""
        from lmk_studio.engine.jobs import BUNDLED_PRESETS

        proj = self.doc.project
        runs = [r for r in proj.runs() if r.status == "finished"]

        def preset(stage: str) -> str | None:
            used = [r for r in runs if r.kind == stage]
            name = (used[-1].config or {}).get("preset") if used else None
            if name in BUNDLED_PRESETS:
                return str(name)
            sel = getattr(self.training, "selected_preset", lambda: None)()
            return sel

        chain: list[tuple[str, str | None]] = [("classical", None)]
        if kind.startswith("stage1") or (kind.startswith("stage2")
                                        and any(r.kind == "stage1" for r in runs)):
            chain.append(("stage1", preset("stage1")))
        if kind.startswith("stage2"):
            chain.append(("stage2", preset("stage2")))
        return chain

    def rerun_stale(self) -> None:
        """The banner's Re-run: redo the active run's chain from the current exemplar."""
        proj = self.doc.project
        tp = self.training
        if proj is None or not hasattr(tp, "start") or tp.is_running():
            return
        if not self.doc.exemplar_complete():
            self.statusBar().showMessage("Place (or mark absent) every landmark of the "
                                         "exemplar first.", 8000)
            return
        rid = history.active_run(self.doc.all_points(), self.doc.exemplar_id)
        kind = proj.run(rid).kind if rid is not None else "classical"
        chain = self._rerun_chain(kind)
        self.stale_banner.clear()
        self._start_chain(chain)

    def _start_chain(self, chain: list[tuple[str, str | None]], continuing: bool = False
                     ) -> bool:
        """Start the first job; the others follow as each finishes. The new answer is compared
        with the one before only at the end: a fresh preview is not a verdict on Stage II."""
        if not chain:
            return False
        (job, preset), rest = chain[0], list(chain[1:])
        self._in_chain = continuing  # read by _job_starting while the job starts
        started = self.training.start(job, preset=preset)
        self._chain = rest if started else []
        self._in_chain = started and (continuing or bool(rest))
        if started:
            self.dock_training.raise_()
        return started

    def ask_keep_worse(self, new_words: str, old_words: str, why: str) -> bool | None:
        """Keep the new run's points although they look worse? True/False, or None when the
        answer comes later: the question is a window-modal sheet (QMessageBox.open), so the
        event loop, and a job queued behind this one, never wait on it. Tests replace this."""
        box = QMessageBox(QMessageBox.Icon.Question, "The new predictions look worse",
                          f"{new_words} looks worse than {old_words}: {why}.\n\nKeep the new "
                          f"points, or go back to {old_words}? (Every run is kept; the Runs "
                          "table in the Training panel switches between them.)",
                          QMessageBox.StandardButton.NoButton, self)
        box.setObjectName("worseRunQuestion")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.addButton("Keep the new points", QMessageBox.ButtonRole.AcceptRole)
        back = box.addButton(f"Go back to {old_words}", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(back)
        self.worse_question = box
        new_id, old_id = self._worse_pair

        def answered(_result: int) -> None:
            if box.clickedButton() is back:
                self._go_back(new_id, old_id)

        box.finished.connect(answered)
        box.open()
        return None

    def _compare_with_before(self) -> None:
        """Never let a job switch the answer to a run that looks worse without asking."""
        proj = self.doc.project
        before, self._active_before = self._active_before, None
        if proj is None or before is None or self._before_stale or self._job_subset:
            return
        pts = self.doc.all_points()
        ex = self.doc.exemplar_id
        now = history.active_run(pts, ex)
        if now is None or now == before:
            return
        try:
            why = history.looks_worse(proj, now, before, pts, ex)
        except (LmkError, OSError) as exc:
            log.warning("could not compare runs %s and %s: %s", now, before, exc)
            return
        if why is None:
            return
        new_w = f"Run {now} ({history.method_words(proj.run(now))})"
        old_w = f"run {before} ({history.method_words(proj.run(before))})"
        log.info("%s looks worse than %s: %s", new_w, old_w, why)
        self._worse_pair = (now, before)
        if self.ask_keep_worse(new_w, old_w, why) is False:
            self._go_back(now, before)

    def _go_back(self, new_id: int, old_id: int) -> None:
        """The user chose the earlier run: only while the new run is still the one shown."""
        if self.doc.project is None:
            return
        if history.active_run(self.doc.all_points(), self.doc.exemplar_id) != new_id:
            self.statusBar().showMessage(f"Run {new_id} is no longer the one shown: use the "
                                         "Runs table to switch.", 10000)
            return
        self.use_run(old_id)

    def use_run(self, run_id: int) -> None:
        """Make an earlier run's points the current ones (never a human's point)."""
        proj = self.doc.project
        if proj is None:
            return
        tp = self.training
        if hasattr(tp, "is_running") and tp.is_running():
            self.statusBar().showMessage("A job is running: switch runs when it ends.", 8000)
            return
        try:
            n = history.restore_run(proj, run_id)
        except (LmkError, OSError) as exc:
            self._error(f"Could not go back to run {run_id}", exc)
            return
        self._pred_cache.clear()
        self.doc.invalidate(None)
        self.review.reset_order()
        self.statusBar().showMessage(f"Now showing run {run_id}'s points ({n} points; your "
                                     "reviewed points and the exemplar are unchanged).", 10000)
        self.check_stale()

    def refresh_runs(self) -> None:
        """The runs table: every finished run with points, against the active one."""
        proj = self.doc.project
        if proj is None:
            self.runs_panel.set_summaries([])
            return
        pts = self.doc.all_points()
        ex = self.doc.exemplar_id
        active = history.active_run(pts, ex)
        try:
            runs = [r for r in proj.runs() if r.status == "finished"][-MAX_RUN_ROWS:]
            preds = {r.id: self._predictions(r.id) for r in runs}
        except (LmkError, OSError) as exc:
            log.warning("could not read the runs: %s", exc)
            return
        rows = [history.summarise(r, preds[r.id], preds.get(active) if active else None,
                                  pts, ex, r.id == active) for r in runs if preds[r.id]]
        self.runs_panel.set_summaries(rows)

    def _predictions(self, run_id: int) -> dict:
        if run_id not in self._pred_cache:
            self._pred_cache[run_id] = self.doc.project.predictions(run_id)
        return self._pred_cache[run_id]

    def _training_finished(self, run_ids: list) -> None:
        self._store_inputs(run_ids)
        self._pred_cache.clear()
        self.doc.invalidate(None)
        if self._chain and self.doc.project is not None:
            chain, self._chain = self._chain, []
            if self._start_chain(chain, continuing=True):
                return
        self._chain, self._in_chain = [], False
        self._compare_with_before()
        self.review.reset_order()
        n_pending = len(self.review.items)
        self.statusBar().showMessage(
            f"Job finished (runs {', '.join(map(str, run_ids))}): {n_pending} predicted "
            "landmarks to review (Space: next).", 15000)
        if n_pending:
            self.dock_review.raise_()
        self.check_stale()
        self._start_pending_predict()

    def _training_cancelled(self, run_ids: list) -> None:
        self._chain, self._in_chain, self._job_inputs = [], False, None
        self.doc.invalidate(None)
        self.statusBar().showMessage("Job cancelled; Resume continues it.", 10000)
        self._pending_predict.clear()   # the user stopped work: do not start more behind it
        self.check_stale()

    def _training_failed(self, message: str) -> None:
        self._chain, self._in_chain, self._job_inputs = [], False, None
        self.doc.invalidate(None)
        self._error("The background job stopped", message)
        self.check_stale()

    # ------------------------------------------------------------------ export, help
    def export_dialog(self) -> None:
        proj = self.doc.project
        if proj is None:
            return
        known = any(r.spacing for r in self.doc.records())
        dlg = ExportDialog(proj, self, spacing_known=known)
        if dlg.exec() != ExportDialog.DialogCode.Accepted:
            return
        self.export(*dlg.choice())

    def export(self, fmt: str, path: Path, reviewed_only: bool, units: str) -> bool:
        try:
            run_export(self.doc.project, fmt, Path(path), reviewed_only, units)
        except (LmkError, OSError, ValueError) as exc:
            self._error("Could not export", exc)
            return False
        self.statusBar().showMessage(f"Exported to {path}", 10000)
        return True

    def show_help(self) -> HelpDialog:
        dlg = HelpDialog(self._actions, self)
        dlg.show()
        return dlg

    def show_log_path(self) -> None:
        self.statusBar().showMessage(f"Log file: {log_path()}", 20000)
        box = QMessageBox(QMessageBox.Icon.Information, "Log file",
                          f"The log file is:\n{log_path()}", QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.show()
