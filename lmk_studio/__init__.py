"""lmk_studio: one-shot anatomical landmark localisation for X-rays (EGT + C2T)."""

__version__ = "0.1.0"
