"""A square patch of an image centred on a sub-pixel point: one helper for every engine that
compares patches (the classical preview's and Stage I's confidence).

OpenCV's warpAffine maps source to destination unless told WARP_INVERSE_MAP; with a translation
to the patch corner and without the flag the patch came from the mirrored position (2c - r), so
the classical preview's confidence compared patches that did not contain the landmark.
"""

from __future__ import annotations

import cv2
import numpy as np


def patch_at(img: np.ndarray, c: np.ndarray | tuple[float, float], r: int) -> np.ndarray:
    """(2r+1, 2r+1) patch whose centre pixel is image point c = (x, y), bilinear, reflected
    at the border."""
    m = np.float32([[1, 0, float(c[0]) - r], [0, 1, float(c[1]) - r]])
    return cv2.warpAffine(img, m, (2 * r + 1, 2 * r + 1),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)
