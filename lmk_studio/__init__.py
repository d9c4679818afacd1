"""lmk_studio: one-shot anatomical landmark localisation for X-rays (EGT + C2T)."""

import os as _os

# before torch is imported anywhere in the app: OpenMP workers yield the core at a barrier
# instead of spinning, so training does not collapse beside another busy process
# (engine/threads.py; measured in training/reports/threads.md). The user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
