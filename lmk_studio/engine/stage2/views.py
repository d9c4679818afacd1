"""Easy / hard views and the exact transform T_{e->h} between them (pixel-centre convention).

Every geometric operation here is an affine matrix in *pixel* coordinates with the origin at the
centre of the top-left pixel (the project's convention). Warps build their own sampling grid and
call grid_sample(align_corners=True), which uses exactly that convention, so an easy-view point p
lands at M @ p in the hard view with no half-pixel drift. Keeping views as matrices (instead of
asking an augmentation library for them) is what makes T_{e->h} exact for heatmaps at any stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def to3(m: np.ndarray) -> np.ndarray:
    """2x3 (or batch of) affine -> 3x3 homogeneous."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] == (3, 3):
        return m
    bottom = np.zeros(m.shape[:-2] + (1, 3))
    bottom[..., 0, 2] = 1.0
    return np.concatenate([m, bottom], axis=-2)


def apply_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points (..., 2) with one affine (2x3 or 3x3)."""
    m3 = to3(m)
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ m3[:2, :2].T + m3[:2, 2]


def rotation_scale_about(center: tuple[float, float], angle_deg: float, scale: float,
                         flip: bool = False) -> np.ndarray:
    """3x3 affine: optional horizontal flip, then rotation + isotropic scale about `center`."""
    cx, cy = center
    a = math.radians(angle_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    lin = np.array([[c, -s], [s, c]])
    if flip:
        lin = lin @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.array([cx, cy]) - lin @ np.array([cx, cy])
    return m


def heatmap_matrix(m: np.ndarray, stride: int) -> np.ndarray:
    """The same transform expressed on a heatmap of `stride` input px per cell.

    A heatmap cell k covers input pixels [k*s, k*s + s - 1], so its centre is at input
    coordinate s*k + (s-1)/2. With S = that map, M_hm = S^-1 @ M @ S.
    """
    s = float(stride)
    sm = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1.0]])
    return np.linalg.inv(sm) @ to3(m) @ sm


def input_to_heatmap(pts: np.ndarray, stride: int) -> np.ndarray:
    s = float(stride)
    return (np.asarray(pts, dtype=np.float64) - (s - 1) / 2) / s


def heatmap_to_input(pts: np.ndarray, stride: int) -> np.ndarray:
    s = float(stride)
    return np.asarray(pts, dtype=np.float64) * s + (s - 1) / 2


def warp(src: torch.Tensor, out_to_src: torch.Tensor, out_hw: tuple[int, int],
         padding: str = "zeros") -> torch.Tensor:
    """Resample `src` (B,C,H,W) so output pixel u reads src at out_to_src @ u.

    out_to_src: (B, 3, 3) or (B, 2, 3) float tensor in pixel coordinates.
    """
    b, _, h_in, w_in = src.shape
    h, w = out_hw
    dev, dt = src.device, src.dtype
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=dt),
                            torch.arange(w, device=dev, dtype=dt), indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)  # (1, HW, 3)
    m = out_to_src[:, :2, :].to(dt)
    mapped = grid @ m.transpose(1, 2)  # (B, HW, 2)
    nx = mapped[..., 0] * (2.0 / max(w_in - 1, 1)) - 1.0
    ny = mapped[..., 1] * (2.0 / max(h_in - 1, 1)) - 1.0
    g = torch.stack([nx, ny], dim=-1).reshape(b, h, w, 2)
    return F.grid_sample(src, g, mode="bilinear", padding_mode=padding, align_corners=True)


def gaussian_heatmaps(pts: torch.Tensor, hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """Unnormalised Gaussians (peak 1) at float centres. pts (B, K, 2) -> (B, K, H, W).

    Centres are NOT rounded (unlike the public code): the target is exact, so sub-pixel
    decoding has something sub-pixel to learn. NaN points give an all-zero map.
    """
    h, w = hw
    dev = pts.device
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w)
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1)
    px = pts[..., 0].float().unsqueeze(-1).unsqueeze(-1)
    py = pts[..., 1].float().unsqueeze(-1).unsqueeze(-1)
    d2 = (xs - px) ** 2 + (ys - py) ** 2
    hm = torch.exp(-d2 / (2.0 * sigma * sigma))
    return torch.nan_to_num(hm, nan=0.0)


@dataclass(frozen=True)
class ViewConfig:
    """Augmentation strengths. Easy = crop jitter (+flip); hard = rotation + scale on top."""

    jitter: float = 0.3          # easy-view crop offset, share of the patch size (uniform +-)
    flip_p: float = 0.0          # horizontal flip of the easy view
    rot_sigma: float = 15.0      # hard view: rotation ~ N(0, sigma) deg, clipped to 2 sigma
    rot_p: float = 0.6
    scale_sigma: float = 0.25    # hard view: scale ~ N(1, sigma), clipped to 1 +- sigma
    gamma: float = 0.0           # photometric: gamma ~ exp(U(-g, g)) on both views
    contrast: float = 0.0        # photometric: affine intensity jitter


def sample_easy(rng: np.random.Generator, center_src: np.ndarray, src_per_px: float,
                patch: int, cfg: ViewConfig) -> np.ndarray:
    """Easy view matrix patch_px -> source_px: a crop at `center_src` (+ jitter, + flip)."""
    half = (patch - 1) / 2.0
    off = rng.uniform(-cfg.jitter, cfg.jitter, size=2) * patch
    flip = bool(rng.random() < cfg.flip_p)
    # patch px u -> source: s = center + src_per_px * (F (u - half) + off)
    fx = -1.0 if flip else 1.0
    m = np.eye(3)
    m[0, 0] = fx * src_per_px
    m[1, 1] = src_per_px
    m[0, 2] = center_src[0] + src_per_px * (off[0] - fx * half)
    m[1, 2] = center_src[1] + src_per_px * (off[1] - half)
    return m


def sample_hard(rng: np.random.Generator, patch_hw: tuple[int, int], cfg: ViewConfig) -> np.ndarray:
    """T_{e->h}: easy px -> hard px (rotation + scale about the view centre)."""
    h, w = patch_hw
    ang = 0.0
    if rng.random() < cfg.rot_p:
        ang = float(np.clip(rng.normal(0.0, cfg.rot_sigma), -2 * cfg.rot_sigma, 2 * cfg.rot_sigma))
    sc = float(np.clip(rng.normal(1.0, cfg.scale_sigma), 1 - cfg.scale_sigma, 1 + cfg.scale_sigma))
    return rotation_scale_about(((w - 1) / 2.0, (h - 1) / 2.0), ang, sc)


def photometric(x: torch.Tensor, rng: np.random.Generator, cfg: ViewConfig) -> torch.Tensor:
    """Per-sample gamma and contrast jitter of [0,1] images (B,1,H,W)."""
    if cfg.gamma <= 0 and cfg.contrast <= 0:
        return x
    b = x.shape[0]
    g = np.exp(rng.uniform(-cfg.gamma, cfg.gamma, size=b)) if cfg.gamma > 0 else np.ones(b)
    c = 1 + rng.uniform(-cfg.contrast, cfg.contrast, size=b) if cfg.contrast > 0 else np.ones(b)
    gt = torch.as_tensor(g, dtype=x.dtype).view(b, 1, 1, 1)
    ct = torch.as_tensor(c, dtype=x.dtype).view(b, 1, 1, 1)
    y = x.clamp(0, 1) ** gt
    m = y.mean(dim=(2, 3), keepdim=True)
    return ((y - m) * ct + m).clamp(0, 1)
