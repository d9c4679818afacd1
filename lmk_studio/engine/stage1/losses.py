"""Stage I losses (paper Eq. 11-16) and their schedules (§4.2)."""

from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F

from .model import identity_grid, warp


def edge_map(img: torch.Tensor) -> torch.Tensor:
    """Sobel (dx, dy) as 2 channels, each min-max normalised per image (as the official code)."""
    g = kornia.filters.spatial_gradient(img, mode="sobel", normalized=True)  # (B, 1, 2, H, W)
    g = g[:, 0]
    lo = g.amin(dim=(2, 3), keepdim=True)
    hi = g.amax(dim=(2, 3), keepdim=True)
    return (g - lo) / (hi - lo).clamp(min=1e-6)


def edge_magnitude(img: torch.Tensor) -> torch.Tensor:
    """|sobel(img)| for the smoothness weights (img in [0, 1])."""
    g = kornia.filters.spatial_gradient(img, mode="sobel", normalized=True)[:, 0]
    return torch.sqrt((g ** 2).sum(1, keepdim=True) + 1e-12)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return kornia.metrics.ssim(a, b, 11, max_val=1.0)


def ssim_loss(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - SSIM, optionally averaged under a (B, 1, H, W) weight map."""
    d = (1 - ssim_map(a, b)).mean(1, keepdim=True)
    if mask is None:
        return d.mean()
    return (d * mask).sum() / mask.sum().clamp(min=1e-6)


def landmark_mask(pts_px: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    """Eq. 14: mean of Gaussians (sigma px) at the points; NaN points are ignored."""
    ys = torch.arange(h, device=pts_px.device, dtype=pts_px.dtype)
    xs = torch.arange(w, device=pts_px.device, dtype=pts_px.dtype)
    ok = torch.isfinite(pts_px).all(-1)                                  # (B, N)
    p = torch.where(ok[..., None], pts_px, torch.zeros_like(pts_px))
    dx = (xs[None, None, None, :] - p[..., 0, None, None]) ** 2          # (B, N, 1, W)
    dy = (ys[None, None, :, None] - p[..., 1, None, None]) ** 2          # (B, N, H, 1)
    g = torch.exp(-(dx + dy) / (2 * sigma ** 2)) * ok[..., None, None]
    return (g.sum(1) / ok.sum(1).clamp(min=1)[:, None, None])[:, None]


def global_l1(warped: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return ((warped - dst).abs() * valid).sum() / valid.sum().clamp(min=1.0)


def esim_loss(warped: torch.Tensor, dst: torch.Tensor, mask: torch.Tensor | None,
              use_edges: bool = True) -> torch.Tensor:
    """Eq. 13: SSIM of the images + SSIM of their edge maps under the landmark mask."""
    loss = ssim_loss(warped, dst)
    if use_edges and mask is not None and float(mask.detach().sum()) > 0:
        loss = loss + ssim_loss(edge_map(warped), edge_map(dst), mask)
    return loss


def esim_per_sample(warped: torch.Tensor, dst: torch.Tensor, mask: torch.Tensor | None,
                    use_edges: bool = True) -> torch.Tensor:
    """(B,) Eq. 13 per pair (the same terms as esim_loss, each pair normalised by its own mask):
    the label-free score a per-pair choice is made with."""
    loss = (1 - ssim_map(warped, dst)).mean(dim=(1, 2, 3))
    if use_edges and mask is not None:
        d = (1 - ssim_map(edge_map(warped), edge_map(dst))).mean(1, keepdim=True)
        loss = loss + (d * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1e-6)
    return loss


def esmooth_loss(flow: torch.Tensor, warped: torch.Tensor, temperature: float = 0.1,
                 edge_weighted: bool = True) -> torch.Tensor:
    """Eq. 15-16: squared flow gradients (px units), weighted by exp(-|edge|^2 / T)."""
    b, h, w, _ = flow.shape
    f = flow * torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=flow.device)
    dx = (f[:, :, 1:] - f[:, :, :-1]).pow(2).sum(-1)                     # (B, H, W-1)
    dy = (f[:, 1:] - f[:, :-1]).pow(2).sum(-1)                           # (B, H-1, W)
    if not edge_weighted:
        return dx.mean() + dy.mean()
    wgt = smooth_weights(warped, temperature)[:, 0]
    wx = 0.5 * (wgt[:, :, 1:] + wgt[:, :, :-1])
    wy = 0.5 * (wgt[:, 1:] + wgt[:, :-1])
    return (dx * wx).sum() / wx.sum().clamp(min=1e-6) + (dy * wy).sum() / wy.sum().clamp(min=1e-6)


def smooth_weights(img: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    return torch.exp(-edge_magnitude(img) ** 2 / temperature)


def inv_loss(flow: torch.Tensor, prev: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Inverse consistency as in the official code: dst warped by (id - flow) should match the
    source before this step (an approximate inverse, cheap and differentiable)."""
    b, h, w, _ = flow.shape
    back = warp(dst, identity_grid(b, h, w, flow.device, flow.dtype) - flow)
    valid = warp(torch.ones_like(dst), identity_grid(b, h, w, flow.device, flow.dtype) - flow)
    return ((back - prev).abs() * valid).sum() / valid.sum().clamp(min=1.0)


def syn_loss(grid: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Synthetic pairs with known correspondence: the grid should equal the true one (px^2/100)."""
    h, w = grid.shape[1:3]
    s = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=grid.device)
    inside = (target.abs() <= 1).all(-1, keepdim=True).float()
    return (((grid - target) * s).pow(2) * inside).sum() / inside.sum().clamp(min=1.0) / 100.0


def random_perspective(b: int, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random 3x3 matrices (output -> source, normalised coords), the notes' distribution:
    scale +-0.125, rotation ~+-15 deg, shear = rot/10, translation +-0.2, perspective +-0.5*0.15."""
    def n(lo: float, hi: float, sd: float) -> torch.Tensor:
        return (torch.randn(b, generator=gen) * sd).clamp(lo, hi)

    s = 1 + n(-0.125, 0.125, 0.1) * strength
    r = n(-2 * 0.0417 * math.pi, 2 * 0.0417 * math.pi, 0.0417 * math.pi) * strength
    sh = r / 10
    tx, ty = n(-0.2, 0.2, 0.1) * strength, n(-0.2, 0.2, 0.1) * strength
    px, py = n(-0.5, 0.5, 0.15) * 0.2 * strength, n(-0.5, 0.5, 0.15) * 0.2 * strength
    c, si, t = torch.cos(r), torch.sin(r), torch.tan(sh)
    m = torch.zeros(b, 3, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = s * c, s * (c * t + si), tx
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -s * si, s * (-si * t + c), ty
    m[:, 2, 0], m[:, 2, 1], m[:, 2, 2] = px, py, 1.0
    return m


# ---- schedules (§4.2, fractions of the run so a short preset keeps the same shape) ----------
def local_weight(frac: float, ramp: float = 1 / 3) -> float:
    """lambda_1 ramps 0 -> 1 over the first third (250 of 750 epochs), exp(-5(1-t)^2)."""
    if ramp <= 0 or frac >= ramp:
        return 1.0
    return math.exp(-5 * (1 - frac / ramp) ** 2)


def syn_weight(frac: float, start: float = 5.0, end_frac: float = 350 / 750) -> float:
    """lambda_3 cosine ramp-down from 5 to 0 (gone by epoch 350 of 750)."""
    if frac >= end_frac:
        return 0.0
    return start * 0.5 * (1 + math.cos(math.pi * frac / end_frac))


def lr_factor(frac: float, flat: float = 1 / 3, final: float = 0.5) -> float:
    """lr constant for the first third, then cosine to half (1e-4 -> 5e-5)."""
    if frac <= flat:
        return 1.0
    t = (frac - flat) / max(1e-9, 1 - flat)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def valid_mask(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(torch.ones_like(src), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True)
