"""The trainer contract every stage relies on: device choice, cancel token, seeding, progress."""

from __future__ import annotations

import pytest
import torch

from lmk_studio.engine.common import (
    Cancelled,
    CancelToken,
    ProgressEvent,
    seed_everything,
    select_device,
)


def test_auto_device_falls_back_to_cpu_without_gpu() -> None:
    dev = select_device("auto")
    if not torch.cuda.is_available():
        assert dev.type in ("cpu", "mps")
    assert select_device("cpu").type == "cpu"


def test_asking_for_a_missing_gpu_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA"):
        select_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")


def test_cancel_token_raises_once_cancelled() -> None:
    tok = CancelToken()
    tok.raise_if_cancelled()
    tok.cancel()
    assert tok.cancelled
    with pytest.raises(Cancelled):
        tok.raise_if_cancelled()


def test_seed_everything_reproduces_torch_draws() -> None:
    seed_everything(7)
    a = torch.randn(5)
    seed_everything(7)
    assert torch.equal(a, torch.randn(5))


def test_progress_fraction_counts_epochs_and_steps() -> None:
    ev = ProgressEvent(stage="stage1", epoch=1, epochs=4, step=5, steps=10)
    assert ev.fraction == pytest.approx(15 / 40)


def test_thread_policy_honours_the_users_count_and_waits_passively(monkeypatch) -> None:
    """OpenMP workers must not spin beside another busy process (training/reports/threads.md):
    importing lmk_studio sets passive waiting unless the user chose otherwise."""
    import os
    import subprocess
    import sys

    from lmk_studio.engine import threads

    code = "import lmk_studio, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr
    monkeypatch.setenv(threads.ENV_THREADS, "3")
    assert threads.thread_count() == 3
    assert threads.thread_count(1) == 1
    monkeypatch.setenv(threads.ENV_THREADS, "lots")
    assert threads.thread_count() == threads.available_cores() >= 1


def test_the_window_and_job_planning_do_not_import_torch() -> None:
    """The GUI process talks to the engine through jobs in another process; planning a retrain
    (engine.jobs.plan_job) must not load torch into it (seconds and hundreds of MB)."""
    import os
    import subprocess
    import sys

    code = ("import sys; import lmk_studio.gui.main_window; "
            "from lmk_studio.engine.jobs import plan_job, run_job; "
            "from lmk_studio.engine import fusion, runs; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
