"""Sub-pixel heatmap decoding: argmax, then a Gaussian (log-quadratic) fit, else local soft-argmax.

Plain argmax quantises to whole cells; the public code's quarter-cell shift still leaves ~1 mm on
ceph images. A Gaussian sampled on a grid has a log that is exactly quadratic, so a 3-point
log-parabola per axis recovers an off-grid centre exactly; where the log fit is ill-posed (flat or
non-positive neighbours) a local soft-argmax in a small window is used instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Decoded:
    points: torch.Tensor   # (B, K, 2) x, y in heatmap cells
    peak: torch.Tensor     # (B, K) heatmap value at the argmax
    spread: torch.Tensor   # (B, K) RMS radius (cells) of the mass above half the peak, in a window


def decode_heatmaps(hm: torch.Tensor, window: int = 2, method: str = "gaussian") -> Decoded:
    """hm (B, K, H, W) -> sub-pixel peaks. method: "gaussian" | "softargmax" | "argmax"."""
    b, k, h, w = hm.shape
    flat = hm.reshape(b, k, -1)
    peak, idx = flat.max(dim=-1)
    iy = torch.div(idx, w, rounding_mode="floor")
    ix = idx - iy * w
    x0, y0 = ix.float(), iy.float()

    r = window
    offs = torch.arange(-r, r + 1, device=hm.device)
    wy = (iy.unsqueeze(-1) + offs).clamp(0, h - 1)  # (B,K,2r+1)
    wx = (ix.unsqueeze(-1) + offs).clamp(0, w - 1)
    bi = torch.arange(b, device=hm.device).view(b, 1, 1, 1)
    ki = torch.arange(k, device=hm.device).view(1, k, 1, 1)
    win = hm[bi, ki, wy.unsqueeze(-1), wx.unsqueeze(-2)]  # (B,K,2r+1,2r+1)
    valid_y = ((iy.unsqueeze(-1) + offs) >= 0) & ((iy.unsqueeze(-1) + offs) <= h - 1)
    valid_x = ((ix.unsqueeze(-1) + offs) >= 0) & ((ix.unsqueeze(-1) + offs) <= w - 1)
    vmask = (valid_y.unsqueeze(-1) & valid_x.unsqueeze(-2)).float()

    # local soft-argmax (mass above zero) -- also the fallback of the Gaussian fit
    wpos = win.clamp(min=0) * vmask
    mass = wpos.sum(dim=(-1, -2)).clamp(min=1e-12)
    of = offs.float()
    sx = (wpos.sum(dim=-2) * of).sum(-1) / mass
    sy = (wpos.sum(dim=-1) * of).sum(-1) / mass

    # spread: RMS radius of the mass above half the peak within the window
    half = (win >= 0.5 * peak.unsqueeze(-1).unsqueeze(-1)).float() * wpos
    hm_mass = half.sum(dim=(-1, -2)).clamp(min=1e-12)
    d2 = of.view(1, 1, -1, 1) ** 2 + of.view(1, 1, 1, -1) ** 2
    spread = torch.sqrt((half * d2).sum(dim=(-1, -2)) / hm_mass)

    if method == "argmax":
        dx, dy = torch.zeros_like(x0), torch.zeros_like(y0)
    elif method == "softargmax":
        dx, dy = sx, sy
    elif method == "gaussian":
        c = win[..., r, r]
        eps = 1e-6
        ok_x = (ix > 0) & (ix < w - 1)
        ok_y = (iy > 0) & (iy < h - 1)
        left, right = win[..., r, r - 1], win[..., r, r + 1]
        up, down = win[..., r - 1, r], win[..., r + 1, r]
        pos = (c > eps) & (left > eps) & (right > eps) & (up > eps) & (down > eps)
        lc, ll, lr = torch.log(c.clamp(min=eps)), torch.log(left.clamp(min=eps)), torch.log(
            right.clamp(min=eps))
        lu, ld = torch.log(up.clamp(min=eps)), torch.log(down.clamp(min=eps))
        den_x = ll - 2 * lc + lr
        den_y = lu - 2 * lc + ld
        gx = 0.5 * (ll - lr) / torch.where(den_x.abs() > 1e-9, den_x, torch.full_like(den_x, -1))
        gy = 0.5 * (lu - ld) / torch.where(den_y.abs() > 1e-9, den_y, torch.full_like(den_y, -1))
        good = pos & ok_x & ok_y & (den_x < -1e-9) & (den_y < -1e-9)
        good = good & (gx.abs() <= 1.0) & (gy.abs() <= 1.0)
        dx = torch.where(good, gx, sx)
        dy = torch.where(good, gy, sy)
    else:
        raise ValueError(f"unknown decoding method {method!r}")
    pts = torch.stack([x0 + dx, y0 + dy], dim=-1)
    return Decoded(points=pts, peak=peak, spread=spread)
