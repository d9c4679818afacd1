"""Attention fusion of the four backbone maps (paper §3.2): self-attention per resolution,
cross-attention from each resolution to the next coarser one, windowed on the fine maps."""

from __future__ import annotations

import torch
from torch import nn


class PosEnc2D(nn.Module):
    """Two learned 1-D encodings (x and y), concatenated: d/2 channels each."""

    def __init__(self, d_model: int, max_len: int = 256) -> None:
        super().__init__()
        self.x = nn.Embedding(max_len, d_model // 2)
        self.y = nn.Embedding(max_len, d_model - d_model // 2)

    def forward(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        ex = self.x(torch.arange(w, device=device).clamp(max=self.x.num_embeddings - 1))
        ey = self.y(torch.arange(h, device=device).clamp(max=self.y.num_embeddings - 1))
        pe = torch.cat([ex[None, :, :].expand(h, w, -1), ey[:, None, :].expand(h, w, -1)], -1)
        return pe.permute(2, 0, 1)  # (d, h, w)


class AttnLayer(nn.Module):
    """Post-norm transformer sub-block: MHA (self or cross) + residual, then FFN + residual."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.n1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                nn.Linear(2 * d, d))
        self.n2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        kv = q if kv is None else kv
        a, _ = self.attn(q, kv, kv, need_weights=False)
        q = self.n1(q + self.drop(a))
        return self.n2(q + self.drop(self.ff(q)))


def _to_windows(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*r*r, H/r*W/r, C): one token sequence per window."""
    b, c, h, w = x.shape
    x = x.view(b, c, r, h // r, r, w // r).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b * r * r, (h // r) * (w // r), c)


def _from_windows(t: torch.Tensor, b: int, c: int, h: int, w: int, r: int) -> torch.Tensor:
    t = t.view(b, r, r, h // r, w // r, c).permute(0, 5, 1, 3, 2, 4)
    return t.reshape(b, c, h, w)


class AttnFuse(nn.Module):
    """N_l layers; each: SA then CA (to the coarser level) at every resolution, coarse to fine.

    Levels 0-1 (strides 32, 16) attend globally; levels 2-3 (8, 4) in R x R windows whose memory
    is the matching window of the coarser map. n_layers=0 disables attention (Table 3 row 1).
    """

    def __init__(self, d: int = 64, heads: int = 2, n_layers: int = 2, dropout: float = 0.1,
                 window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.n_layers = n_layers
        self.pos = nn.ModuleList([PosEnc2D(d) for _ in range(4)])
        self.sa = nn.ModuleList([nn.ModuleList([AttnLayer(d, heads, dropout) for _ in range(4)])
                                 for _ in range(n_layers)])
        self.ca = nn.ModuleList([nn.ModuleList([AttnLayer(d, heads, dropout) for _ in range(3)])
                                 for _ in range(n_layers)])

    def _r(self, fine: torch.Tensor, coarse: torch.Tensor, level: int) -> int:
        if level < 2:
            return 1
        r = self.window
        ok = all(s % r == 0 for s in (*fine.shape[-2:], *coarse.shape[-2:]))
        return r if ok else 1

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [f + self.pos[i](f.shape[-2], f.shape[-1], f.device)[None] for i, f in enumerate(feats)]
        for layer in range(self.n_layers):
            out: list[torch.Tensor] = []
            for lv, x in enumerate(xs):
                b, c, h, w = x.shape
                coarse = out[lv - 1] if lv > 0 else None
                r = self._r(x, coarse, lv) if coarse is not None else 1
                q = _to_windows(x, r) if r > 1 else x.flatten(2).transpose(1, 2)
                q = self.sa[layer][lv](q)
                if coarse is not None:
                    m = (_to_windows(coarse, r) if r > 1
                         else coarse.flatten(2).transpose(1, 2))
                    q = self.ca[layer][lv - 1](q, m)
                x = (_from_windows(q, b, c, h, w, r) if r > 1
                     else q.transpose(1, 2).reshape(b, c, h, w))
                out.append(x)
            xs = out
        return xs
