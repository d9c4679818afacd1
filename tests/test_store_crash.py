"""Process safety. Crash: a writer process applying numbered edits is SIGKILLed at random moments;
every edit it reported as committed survives, at most the one in flight is missing, and the file
passes SQLite's integrity check after every kill. Sharing: a "training" process writing batches
while this process (the "GUI") edits and reads: no edit fails on the lock, none is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmk_studio.core.points import Status
from lmk_studio.core.templates import LandmarkDef, Template

store = pytest.importorskip("lmk_studio.core.store")
pytest.importorskip("lmk_studio.core.images")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

N_LM = 5
N_IMG = 4
SLOTS = N_LM * N_IMG

# Edit i alternates between the three kinds of write the app makes: one point (a click), a batch
# of points (an engine result: one transaction), a model run row. Point values encode i.
WRITER = r"""
import sys
from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.core.store import Project

path, start = sys.argv[1], int(sys.argv[2])
SLOTS, N_LM = int(sys.argv[3]), int(sys.argv[4])
p = Project.open(path)
ids = [r.id for r in p.images()]
print("ready", flush=True)
i = start
while True:
    s = i % SLOTS
    iid, idx = ids[s // N_LM], s % N_LM
    if i % 3 == 0:
        p.set_point(iid, idx, float(i), -float(i), confidence=i / 1e6)
    elif i % 3 == 1:
        p.set_points([(iid, LandmarkPoint(idx, float(i), -float(i), Status.PREDICTED,
                                          Source.STAGE1, 0.5, 1.0)),
                      (ids[(s // N_LM + 1) % len(ids)],
                       LandmarkPoint(idx, float(i) + 0.5, 0.0, Status.PREDICTED,
                                     Source.STAGE1))])
    else:
        p.start_run("crash-test", {"i": i})
    print(i, flush=True)
    i += 1
"""


def _expected(last: int) -> tuple[dict[tuple[int, int], float], set[int]]:
    """Slot -> x and the run numbers after edits 0..last all committed (in order)."""
    slots: dict[tuple[int, int], float] = {}
    runs: set[int] = set()
    for i in range(last + 1):
        s = i % SLOTS
        img, idx = s // N_LM, s % N_LM
        if i % 3 == 0:
            slots[(img, idx)] = float(i)
        elif i % 3 == 1:
            slots[(img, idx)] = float(i)
            slots[((img + 1) % N_IMG, idx)] = float(i) + 0.5
        else:
            runs.add(i)
    return slots, runs


def _observed(lmk: Path) -> tuple[dict[tuple[int, int], float], set[int], list[str]]:
    with store.Project.open(lmk) as p:
        check = p.integrity_check()
        ids = [r.id for r in p.images()]
        slots = {}
        for k, iid in enumerate(ids):
            for q in p.points(iid):
                if q.status is not Status.UNLABELLED:
                    slots[(k, q.index)] = q.x
        runs = {r.config["i"] for r in p.runs() if r.kind == "crash-test"}
    return slots, runs, check


def _png(path: Path) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((16, 16), np.uint8))
    path.write_bytes(buf.tobytes())


def test_sigkilled_writer_loses_at_most_the_edit_in_flight(tmp_path: Path) -> None:
    d = tmp_path / "images"
    d.mkdir()
    for k in range(N_IMG):
        _png(d / f"im{k}.png")
    lmk = tmp_path / "crash.lmk"
    t = Template("crash", [LandmarkDef(f"L{i}") for i in range(N_LM)])
    store.Project.create(lmk, t, d).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    rng = random.Random(20221023)
    start, kills, total_committed = 0, 0, 0
    for delay in [rng.uniform(0.02, 0.5) for _ in range(6)]:
        proc = subprocess.Popen([sys.executable, str(script), str(lmk), str(start), str(SLOTS),
                                 str(N_LM)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "ready\n", proc.stderr.read() if proc.stderr else first
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        done = [int(line) for line in out.split("\n")[:-1]]  # only complete lines
        assert done == list(range(start, start + len(done))), "edits out of order"
        last = done[-1] if done else start - 1
        slots, runs, check = _observed(lmk)
        assert check == ["ok"]
        exp_committed = _expected(last)
        exp_in_flight = _expected(last + 1)
        assert (slots, runs) in (exp_committed, exp_in_flight), (
            f"after kill at edit {last}: the store differs from edits 0..{last} "
            f"(and from 0..{last + 1})")
        # the next writer continues after whatever really committed
        start = last + 2 if (slots, runs) == exp_in_flight else last + 1
        kills += 1
        total_committed += len(done)
    assert kills == 6
    assert total_committed > 30, "the writer hardly ran: the kills did not land mid-stream"


BATCH_WRITER = r"""
import sys
import time
from lmk_studio.core.points import LandmarkPoint, Source, Status
from lmk_studio.core.store import Project

path, rounds, n_lm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Project.open(path) as p:
    ids = [r.id for r in p.images()]
    print("ready", flush=True)
    for k in range(rounds):
        rid = p.start_run("stage2", {"round": k})
        rows = [(iid, LandmarkPoint(j, float(k), float(k), Status.PREDICTED, Source.STAGE2, 0.5,
                                    1.0, rid)) for iid in ids[1:] for j in range(n_lm)]
        p.record_predictions(rid, rows)
        p.set_points(rows)
        p.finish_run(rid, "finished", metrics={"round": k})
        time.sleep(0.01)  # the model's work between writes (a tight write loop starves others)
print("done", flush=True)
"""


def test_gui_and_training_process_share_the_project(tmp_path: Path) -> None:
    d = tmp_path / "images"
    d.mkdir()
    for k in range(N_IMG):
        _png(d / f"im{k}.png")
    lmk = tmp_path / "shared.lmk"
    t = Template("shared", [LandmarkDef(f"L{i}") for i in range(N_LM)])
    store.Project.create(lmk, t, d).close()
    script = tmp_path / "batch_writer.py"
    script.write_text(BATCH_WRITER)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    rounds = 20
    proc = subprocess.Popen([sys.executable, str(script), str(lmk), str(rounds), str(N_LM)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        edits = 0
        with store.Project.open(lmk) as gui:
            ex = gui.images()[0].id
            while proc.poll() is None or edits < 10:
                j = edits % N_LM
                gui.set_point(ex, j, float(edits), 1.0, status=Status.EXEMPLAR)
                snap = gui.all_points()  # a consistent snapshot while the batches land
                for iid, pts in snap.items():
                    if iid != ex:
                        assert len({p.x for p in pts}) == 1, "half a batch visible"
                edits += 1
                time.sleep(0.005)  # a person clicks far slower than this
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert out.strip() == "done"
            runs = [r for r in gui.runs() if r.kind == "stage2"]
            assert [r.metrics["round"] for r in runs] == list(range(rounds))
            assert all(r.status == "finished" for r in runs)
            assert all(q.x == float(rounds - 1) for iid, pts in gui.all_points().items()
                       if iid != ex for q in pts)
            last = {q.index: q.x for q in gui.points(ex)}
            for j in range(N_LM):  # the GUI's own edits: the last one per landmark
                assert last[j] == float(max(e for e in range(edits) if e % N_LM == j))
            assert gui.integrity_check() == ["ok"]
        assert edits >= 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_opening_a_project_twice_in_one_process_keeps_the_writers_locks(tmp_path) -> None:
    """POSIX locks belong to the process: the header check of a second Project.open used to
    open()/close() the file, which dropped the SQLite locks of the first connection while it
    was writing. An open project is now checked through SQLite only."""
    from unittest import mock

    from lmk_studio.core import store
    from lmk_studio.core.phantoms import write_demo_project

    lmk = write_demo_project(tmp_path / "d", n=3, size=(64, 64), seed=0)
    real_open = open
    raw_opens: list[str] = []

    def spy(file, *a, **k):
        if str(file) == str(lmk):
            raw_opens.append(str(file))
        return real_open(file, *a, **k)

    with store.Project.open(lmk) as first:
        with mock.patch("builtins.open", spy), store.Project.open(lmk) as second:
            assert second.exemplar_id == first.exemplar_id
        assert raw_opens == []
    with mock.patch("builtins.open", spy), store.Project.open(lmk):
        pass
    assert raw_opens == [str(lmk)]  # closed everywhere: the plain header check is back
