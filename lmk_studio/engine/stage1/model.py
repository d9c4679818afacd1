"""The EGT registration network g_theta and its geometry (paper Eq. 1-3, 8-11).

Conventions: images are (B, 1, H, W) in [0, 1]; all geometry is in normalised coordinates
(grid_sample, align_corners=True), so pixel p <-> 2p/(size-1) - 1. A "grid" G (B, H, W, 2) maps
each output pixel u to the source location it samples: I_warped(u) = I_src(G(u)). Landmarks of
the source are carried exactly as the image is: a source point s lands at the u with G(u) = s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttnFuse
from .backbones import make_backbone

MEAN, STD = 0.449, 0.226


# ---- geometry ------------------------------------------------------------------------------
def affine_from_params(o: torch.Tensor, sf: tuple[float, float] = (1.0, 1.0),
                       rot: float = math.pi / 2, sh: float = math.pi / 2) -> torch.Tensor:
    """o (B, 6) in [-1, 1] -> the paper's 2x3 matrix (Eq. 9-10 and the matrix below them)."""
    tx, ty = o[:, 0], o[:, 1]
    sx, sy = 1 + o[:, 2] * sf[0], 1 + o[:, 3] * sf[1]
    a, b = o[:, 4] * rot, o[:, 5] * sh
    ca, sa, tb = torch.cos(a), torch.sin(a), torch.tan(b)
    row0 = torch.stack([sx * ca, sx * (ca * tb + sa), tx], -1)
    row1 = torch.stack([-sy * sa, sy * (-sa * tb + ca), ty], -1)
    return torch.stack([row0, row1], 1)


def to_homog(m: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) or (B, 3, 3) -> (B, 3, 3)."""
    if m.shape[-2] == 3:
        return m
    bottom = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=m.dtype, device=m.device).repeat(
        m.shape[0], 1, 1)
    return torch.cat([m, bottom], 1)


def identity_grid(b: int, h: int, w: int, device, dtype=torch.float32) -> torch.Tensor:
    ys = torch.linspace(-1, 1, h, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)[None].repeat(b, 1, 1, 1)


def grid_from_matrix(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sampling grid of a 2x3 affine or 3x3 perspective matrix acting on output coordinates."""
    hm = to_homog(m)
    g = identity_grid(hm.shape[0], h, w, hm.device, hm.dtype)
    ones = torch.ones_like(g[..., :1])
    p = torch.cat([g, ones], -1) @ hm.transpose(1, 2)[:, None]
    return p[..., :2] / p[..., 2:].clamp(min=1e-6)


def points_through_matrix(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Source points (B, N, 2) -> output location: the inverse of the sampling matrix."""
    inv = torch.linalg.inv(to_homog(m))
    p = torch.cat([pts, torch.ones_like(pts[..., :1])], -1) @ inv.transpose(1, 2)
    return p[..., :2] / p[..., 2:].clamp(min=1e-6)


def sample_field(field: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear value of a (B, H, W, 2) field at normalised points (B, N, 2)."""
    v = F.grid_sample(field.permute(0, 3, 1, 2), pts[:, :, None, :], mode="bilinear",
                      padding_mode="border", align_corners=True)
    return v[..., 0].transpose(1, 2)


def compose_flow(grid: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """G'(u) = G(u + flow(u)): the grid after one more local step."""
    b, h, w, _ = flow.shape
    pos = identity_grid(b, h, w, flow.device, flow.dtype) + flow
    g = F.grid_sample(grid.permute(0, 3, 1, 2), pos, mode="bilinear", padding_mode="border",
                      align_corners=True)
    return g.permute(0, 2, 3, 1)


def points_through_flow(flow: torch.Tensor, pts: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Solve q + flow(q) = p by fixed-point iteration (first step = the notes' p - flow(p))."""
    q = pts - sample_field(flow, pts)
    for _ in range(iters - 1):
        q = pts - sample_field(flow, q)
    return q


def warp(img: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def px_to_norm(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=p.dtype, device=p.device)
    return p * scale - 1


def norm_to_px(p: torch.Tensor, h: int, w: int) -> torch.Tensor:
    scale = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=p.dtype, device=p.device)
    return (p + 1) * scale


# ---- network -------------------------------------------------------------------------------
class EGTNet(nn.Module):
    """Backbone + attention fusion + global head (affine/perspective) + recurrent local head.

    The same weights run the global pass and every local step (weight-shared recurrence), as in
    the official code; `global_type` in {"none", "affine", "perspective", "given"} ("given" = an
    external matrix, e.g. the classical global step).
    """

    def __init__(self, backbone: str = "small_cnn", width: int = 16, d_model: int = 64,
                 heads: int = 2, n_layers: int = 2, dropout: float = 0.1, window: int = 4,
                 global_type: str = "affine", max_flow: float = 0.5,
                 weights: str | None = None) -> None:
        super().__init__()
        self.backbone = make_backbone(backbone, width, weights)
        self.pretrained_note = getattr(self.backbone, "pretrained_note", "")
        self.proj = nn.ModuleList([nn.Conv2d(c, d_model, 1) for c in self.backbone.channels])
        self.fuse = AttnFuse(d_model, heads, n_layers, dropout, window)
        self.global_type = global_type
        n_out = 8 if global_type == "perspective" else 6
        self.global_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(inplace=True),
                                        nn.Linear(d_model, n_out))
        nn.init.zeros_(self.global_mlp[2].weight)
        nn.init.zeros_(self.global_mlp[2].bias)
        self.local_head = nn.Linear(d_model, 2 * 4)  # 2 x (2x2 pixel shuffle) at stride 4 -> /2
        nn.init.zeros_(self.local_head.weight)
        nn.init.zeros_(self.local_head.bias)
        self.max_flow = max_flow

    def features(self, src: torch.Tensor, dst: torch.Tensor) -> list[torch.Tensor]:
        s, d = (src - MEAN) / STD, (dst - MEAN) / STD
        x = torch.cat([s, d, 0.5 * (s + d)], 1)
        feats = [p(f) for p, f in zip(self.proj, self.backbone(x), strict=True)]
        return self.fuse(feats)

    def global_matrix(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        fused = self.features(src, dst)
        h = fused[1].mean(dim=(2, 3))  # aggregated low-resolution state (stride 16)
        o = torch.tanh(self.global_mlp(h))
        a = affine_from_params(o[:, :6])
        if self.global_type == "perspective":
            bottom = torch.cat([0.5 * o[:, 6:8], torch.ones_like(o[:, :1])], -1)[:, None]
            return torch.cat([a, bottom], 1)
        return a

    def local_flow(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Displacement field (B, H, W, 2) in normalised units from the stride-4 state."""
        fused = self.features(src, dst)[3]
        b, c, h4, w4 = fused.shape
        t = self.local_head(fused.flatten(2).transpose(1, 2))            # (B, h4*w4, 8)
        t = t.transpose(1, 2).reshape(b, 8, h4, w4)
        t = F.pixel_shuffle(t, 2)                                        # (B, 2, h/2, w/2)
        t = F.interpolate(t, size=src.shape[-2:], mode="bilinear", align_corners=True)
        return (torch.tanh(t) * self.max_flow).permute(0, 2, 3, 1)

    def forward(self, src: torch.Tensor, dst: torch.Tensor, n_local: int = 2,
                pts: torch.Tensor | None = None, given: torch.Tensor | None = None) -> dict:
        """Cascade: A, then n_local flows. pts: source points, normalised (B, N, 2)."""
        b, _, h, w = src.shape
        if self.global_type == "none":
            mat = torch.eye(2, 3, device=src.device, dtype=src.dtype).repeat(b, 1, 1)
        elif self.global_type == "given":
            if given is None:
                raise ValueError("global_type 'given' needs a matrix")
            mat = given
        else:
            mat = self.global_matrix(src, dst)
        grid = grid_from_matrix(mat, h, w)
        out = {"matrix": mat, "grids": [grid], "warped": [warp(src, grid)], "flows": [],
               "points": []}
        p = points_through_matrix(mat, pts) if pts is not None else None
        out["points"].append(p)
        for _ in range(n_local):
            prev = out["warped"][-1]
            flow = self.local_flow(prev, dst)
            grid = compose_flow(grid, flow)
            out["flows"].append(flow)
            out["grids"].append(grid)
            out["warped"].append(warp(src, grid))
            if p is not None:
                p = points_through_flow(flow, p)
            out["points"].append(p)
        return out
