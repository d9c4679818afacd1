"""Take the README screenshots from a real run of the app (annotating, training, reviewing).

    QT_QPA_PLATFORM=offscreen .venv/bin/python training/screenshots.py [--out DIR] [--preset quick]

Nothing is staged: the script creates a project from the demo phantoms, places the exemplar's
landmarks with real mouse events on the canvas, lets the app start its classical preview, runs
the "all" job (Stage I + Stage II, `--preset`) in the background process, then walks the review
queue. Window grabs go to resources/screenshots/{annotating,training,reviewing}.png.
Everything is written under a temporary LMK_STUDIO_HOME, so the user's own settings, recent list
and demo are never touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "resources" / "screenshots"))
    ap.add_argument("--preset", default="quick", help="training preset for the 'all' job")
    ap.add_argument("--size", default="1500x940", help="window size WxH")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for training")
    args = ap.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    home = tempfile.mkdtemp(prefix="lmk_screens_")
    os.environ["LMK_STUDIO_HOME"] = home
    sys.path.insert(0, str(REPO))

    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest

    from lmk_studio.core.phantoms import phantom_template
    from lmk_studio.gui.app import dispose, make_app
    from lmk_studio.gui.main_window import MainWindow, ensure_demo_project

    app = make_app()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.lower().split("x"))

    def pump(cond, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"screenshots: timed out waiting for {what}")

    def settle(seconds: float = 0.4) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            app.processEvents()
            time.sleep(0.02)

    def click(x: float, y: float) -> None:
        vp = win.canvas.view.viewport()
        pos = win.canvas.view_to_widget(x, y)
        QTest.mouseMove(vp, pos)
        settle(0.03)
        QTest.mouseClick(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        settle(0.03)

    def grab(name: str) -> None:
        settle(0.5)
        path = out / name
        if not win.grab().save(str(path)):
            raise SystemExit(f"screenshots: could not write {path}")
        print(f"wrote {path}")

    win = MainWindow()
    win.resize(w, h)
    win.show()
    demo = ensure_demo_project()  # under the temporary home
    images = demo.parent / "images"
    from lmk_studio.core.store import Project

    with Project.open(demo) as p:  # the demo's own exemplar: where a user would click
        ex_pts = [(q.x, q.y) for q in p.points(p.exemplar_id)]
    project = Path(home) / "clinic demo.lmk"
    if not win.create_project(project, phantom_template(), images):
        raise SystemExit(f"screenshots: could not create {project}: {win.last_error}")
    pump(lambda: win.shown_image_id is not None, 30, "the first image")
    win.dock_landmarks.raise_()

    # 1. annotating: the first landmarks placed with the mouse, the next one current
    n_first = 7
    for x, y in ex_pts[:n_first]:
        click(x, y)
    hx, hy = ex_pts[2]
    QTest.mouseMove(win.canvas.view.viewport(), win.canvas.view_to_widget(hx, hy) + QPoint(1, 1))
    grab("annotating.png")

    # 2. training: the rest placed -> classical preview starts itself; then Stage I + II
    tp = win.training
    done: list[list] = []
    tp.finished.connect(done.append)
    failed: list[str] = []
    tp.failed.connect(failed.append)
    for x, y in ex_pts[n_first:]:
        click(x, y)
    pump(lambda: done or failed, 300, "the classical preview")
    if failed:
        raise SystemExit(f"screenshots: the preview failed: {failed[-1]}")
    events: list = []
    tp.progress.connect(lambda ev: events.append(ev))
    win.dock_training.raise_()
    if not tp.start("all", preset=args.preset):
        raise SystemExit(f"screenshots: could not start training: {failed[-1:]}")
    pump(lambda: sum(e.stage.startswith("stage2") or "2" in e.stage for e in events) >= 12
         or len(done) >= 2 or failed, args.timeout, "Stage II progress")
    grab("training.png")
    pump(lambda: len(done) >= 2 or failed, args.timeout, "the end of training")
    if failed:
        raise SystemExit(f"screenshots: training failed: {failed[-1]}")

    # 3. reviewing: lowest confidence first, a few accepted, Stage I and II shown together
    win.dock_review.raise_()
    win.a_stage1.setChecked(True)
    win.a_stage2.setChecked(True)
    for _ in range(3):
        win.review_next()
        pump(lambda: win.shown_image_id == win.doc.image_id, 30, "the review image")
        win.accept_point()
    pump(lambda: win.shown_image_id == win.doc.image_id, 30, "the review image")
    QTest.mouseMove(win.canvas.view.viewport(), QPoint(3, 3))  # no hover highlight in the shot
    settle(0.3)
    grab("reviewing.png")
    dispose(win)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
