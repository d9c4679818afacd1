"""Consistency Co-Teaching losses and small-loss selection (paper Eq. 17-20, Algorithm 1).

Every loss here is *per pair* (one sample x one landmark channel), shape (B,), never a batch
mean: the public code averages L_con^self over the batch, which adds the same constant to every
candidate and so cannot influence which pseudo-labels are selected. Here it can.

Loss scale: sum of squared heatmap differences divided by pi*sigma^2 (the energy of one target
Gaussian), so predicting an all-zero map costs about 1 whatever the patch size.
"""

from __future__ import annotations

import math

import torch

from .views import warp


def pick_channels(hm: torch.Tensor, chan: torch.Tensor) -> torch.Tensor:
    """(B,K,H,W) + channel index per sample (B,) -> (B,H,W)."""
    b = hm.shape[0]
    return hm[torch.arange(b, device=hm.device), chan]


def heat_loss(pred: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 17 per pair: pred, target (B,H,W) -> (B,)."""
    return ((pred - target) ** 2).sum(dim=(-1, -2)) / (math.pi * sigma * sigma)


def transform_easy_to_hard(easy_hm: torch.Tensor, e2h_hm: torch.Tensor,
                           out_hw: tuple[int, int]) -> torch.Tensor:
    """T_{e->h} applied to heatmaps: e2h_hm (B,3,3) maps easy heatmap cells to hard cells."""
    inv = torch.linalg.inv(e2h_hm.double()).float()
    x = easy_hm.unsqueeze(1) if easy_hm.dim() == 3 else easy_hm
    out = warp(x, inv, out_hw, padding="zeros")
    return out.squeeze(1) if easy_hm.dim() == 3 else out


def consistency_loss(hard_pred: torch.Tensor, easy_pred_in_hard: torch.Tensor,
                     sigma: float) -> torch.Tensor:
    """Eq. 18 (same net) / Eq. 20 (other net) per pair: (B,H,W) x (B,H,W) -> (B,)."""
    return ((hard_pred - easy_pred_in_hard) ** 2).sum(dim=(-1, -2)) / (math.pi * sigma * sigma)


def forget_rate(epoch_float: float, forget_max: float, ramp_epochs: float) -> float:
    """Share of pseudo pairs dropped per batch, ramping linearly 0 -> forget_max (paper §4.2)."""
    if ramp_epochs <= 0:
        return forget_max
    return forget_max * min(1.0, max(0.0, epoch_float / ramp_epochs))


def select_small_loss(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Indices of the ceil(keep*B) smallest scores (at least one if keep > 0)."""
    n = scores.numel()
    if n == 0 or keep <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    k = max(1, min(n, int(math.ceil(keep * n - 1e-9))))
    return torch.argsort(scores, stable=True)[:k]


class LandmarkLossNorm:
    """Running mean of the filter loss per landmark.

    Hard landmarks (soft tissue) always have larger losses than easy ones (sella); ranking raw
    losses across a mixed batch would starve hard landmarks of pseudo-labels. Dividing by the
    landmark's running mean ranks each pair against its own landmark's typical difficulty.
    """

    def __init__(self, n_landmarks: int, momentum: float = 0.9) -> None:
        self.mean = torch.ones(n_landmarks)
        self.seen = torch.zeros(n_landmarks, dtype=torch.bool)
        self.momentum = momentum

    def normalise(self, scores: torch.Tensor, chan: torch.Tensor) -> torch.Tensor:
        s = scores.detach().cpu()
        c = chan.cpu()
        for j in torch.unique(c).tolist():
            m = s[c == j].mean()
            if not self.seen[j]:
                self.mean[j] = m
                self.seen[j] = True
            else:
                self.mean[j] = self.momentum * self.mean[j] + (1 - self.momentum) * m
        return (s / self.mean[c].clamp(min=1e-6)).to(scores.device)

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, st: dict) -> None:
        self.mean = st["mean"].clone()
        self.seen = st["seen"].clone()
