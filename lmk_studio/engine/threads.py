"""How many threads torch uses, and how they wait: training must not collapse when another busy
process shares the cores (a clinician's laptop is never idle).

OpenMP's default is to spin at every barrier. With 2 threads on 2 cores and one other busy
process, a spinning worker waits for one that has no core, and a Stage II step went from ~0.5 s
to ~5 s. Passive waiting (`OMP_WAIT_POLICY=PASSIVE`, set in `lmk_studio/__init__.py` so that it
is in the environment before torch starts its OpenMP runtime) yields the core instead; the
measured effect is in training/reports/threads.md (training/bench_threads.py).
"""

from __future__ import annotations

import os

#: the user's override of the thread count (also honoured by the GUI's job process)
ENV_THREADS = "LMK_STUDIO_THREADS"


def available_cores() -> int:
    """Cores this process may run on (affinity / container limits), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_count(requested: int | None = None) -> int:
    """`requested` if given, else $LMK_STUDIO_THREADS, else every available core."""
    if requested:
        return max(1, int(requested))
    env = os.environ.get(ENV_THREADS, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


def apply_thread_policy(requested: int | None = None) -> int:
    """Set torch's intra-op threads (and one inter-op thread: the engines run one graph at a
    time, extra inter-op workers only add more spinners); returns the count used."""
    import torch

    n = thread_count(requested)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work; keep what is there
        pass
    return n
