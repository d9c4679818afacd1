"""Stage II trainer: C2T co-training of two patch detectors on the exemplar + noisy pseudo-labels.

Data model: one *pair* = (image, landmark). Its sample is a patch of the downscaled image centred
near the pair's label (Stage-I pseudo-label, or a trusted human label); the detectors output one
channel per landmark and the pair supervises its own channel. Trusted pairs (exemplar, accepted,
corrected) form the labelled set D_l and are in every batch; pseudo pairs form D_u, on which each
network selects the small-loss share for the other (Algorithm 1).

Reproducibility: every random draw of global step t comes from a generator seeded with
(seed, t), and the pseudo-pair order of epoch e from (seed, e); a checkpoint therefore only needs
model / optimiser / scheduler state, the step counter and the per-landmark loss norms to resume
to exactly the same trajectory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from lmk_studio.core.errors import LmkError
from lmk_studio.engine import checkpoints
from lmk_studio.engine.common import (
    Cancelled,
    CancelToken,
    EtaClock,
    ProgressCallback,
    ProgressEvent,
    no_progress,
)

from .c2t import (
    LandmarkLossNorm,
    consistency_loss,
    forget_rate,
    heat_loss,
    pick_channels,
    select_small_loss,
    transform_easy_to_hard,
)
from .config import Stage2Config
from .detectors import build_detector
from .views import (
    gaussian_heatmaps,
    heatmap_matrix,
    input_to_heatmap,
    photometric,
    sample_easy,
    sample_hard,
    warp,
)


def downscale(image: np.ndarray, scale: float) -> tuple[np.ndarray, tuple[float, float]]:
    """Area-downscale a float [0,1] image by `scale`; returns it and (fx, fy) orig px per px."""
    h, w = image.shape[:2]
    if scale <= 1.0:
        return np.ascontiguousarray(image, dtype=np.float32), (1.0, 1.0)
    nw, nh = max(8, int(round(w / scale))), max(8, int(round(h / scale)))
    small = cv2.resize(np.asarray(image, dtype=np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
    return small, (w / nw, h / nh)


def orig_to_down(p: np.ndarray, f: tuple[float, float]) -> np.ndarray:
    """Pixel-centre convention: original pixel centre x maps to (x + 0.5) / f - 0.5."""
    f_ = np.asarray(f, dtype=np.float64)
    return (np.asarray(p, dtype=np.float64) + 0.5) / f_ - 0.5


def down_to_orig(q: np.ndarray, f: tuple[float, float]) -> np.ndarray:
    f_ = np.asarray(f, dtype=np.float64)
    return (np.asarray(q, dtype=np.float64) + 0.5) * f_ - 0.5


@dataclass
class Stage2Data:
    """Downscaled images + labels in ORIGINAL pixels (NaN = missing) + which labels are trusted."""

    images: list[np.ndarray]            # downscaled float32 (h, w)
    factors: list[tuple[float, float]]  # orig px per downscaled px
    points: np.ndarray                  # (M, N, 2) original px
    trusted: np.ndarray                 # (M, N) bool
    coarse: Stage2Data | None = None    # the same pairs at the coarse level's scale (cascade)

    @classmethod
    def from_full(cls, full_images: list[np.ndarray], points: np.ndarray, trusted: np.ndarray,
                  scale: float, coarse_scale: float | None = None) -> Stage2Data:
        imgs, facs, cimgs, cfacs = [], [], [], []
        for im in full_images:
            s, f = downscale(im, scale)
            imgs.append(s)
            facs.append(f)
            if coarse_scale:
                c, cf = downscale(im, coarse_scale)
                cimgs.append(c)
                cfacs.append(cf)
        pts = np.asarray(points, dtype=np.float64)
        tr = np.asarray(trusted, dtype=bool)
        coarse = cls(cimgs, cfacs, pts, tr) if coarse_scale else None
        return cls(imgs, facs, pts, tr, coarse)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(trusted pairs, pseudo pairs), each (P, 2) of [image, landmark]."""
        ok = np.isfinite(self.points).all(axis=-1)
        tr = np.argwhere(ok & self.trusted)
        ps = np.argwhere(ok & ~self.trusted)
        return tr, ps


@dataclass
class Batch:
    easy: torch.Tensor      # (B,1,P,P)
    hard: torch.Tensor
    t_easy: torch.Tensor    # (B,h,w) target heatmaps of the pair's channel
    t_hard: torch.Tensor
    e2h: torch.Tensor       # (B,3,3) T_{e->h} in heatmap cells
    chan: torch.Tensor      # (B,)
    n_trusted: int


def build_batch(data: Stage2Data, pairs: np.ndarray, n_trusted: int, rng: np.random.Generator,
                cfg: Stage2Config, stride: int) -> Batch:
    """Sample easy/hard views for each pair; targets from the pair's label (orig px)."""
    p = cfg.patch
    hw_hm = (p // stride, p // stride)
    easy, hard, te, th, e2h = [], [], [], [], []
    for img_i, lm in pairs:
        img = data.images[img_i]
        f = data.factors[img_i]
        lab = orig_to_down(data.points[img_i, lm], f)
        e = sample_easy(rng, lab, 1.0, p, cfg.views)      # easy px -> down px
        m = sample_hard(rng, (p, p), cfg.views)            # easy px -> hard px
        src = torch.from_numpy(img)[None, None]
        e_t = torch.as_tensor(e, dtype=torch.float32)[None]
        h_t = torch.as_tensor(e @ np.linalg.inv(m), dtype=torch.float32)[None]
        easy.append(warp(src, e_t, (p, p), padding="border"))
        hard.append(warp(src, h_t, (p, p), padding="border"))
        pe = np.linalg.solve(e, np.array([lab[0], lab[1], 1.0]))[:2]
        ph = (m @ np.array([pe[0], pe[1], 1.0]))[:2]
        te.append(input_to_heatmap(pe, stride))
        th.append(input_to_heatmap(ph, stride))
        e2h.append(heatmap_matrix(m, stride))
    easy_t = photometric(torch.cat(easy), rng, cfg.views)
    hard_t = photometric(torch.cat(hard), rng, cfg.views)
    te_t = gaussian_heatmaps(torch.as_tensor(np.array(te))[:, None], hw_hm, cfg.sigma)[:, 0]
    th_t = gaussian_heatmaps(torch.as_tensor(np.array(th))[:, None], hw_hm, cfg.sigma)[:, 0]
    return Batch(easy_t, hard_t, te_t, th_t, torch.as_tensor(np.array(e2h), dtype=torch.float32),
                 torch.as_tensor(pairs[:, 1], dtype=torch.long), n_trusted)


class Stage2Trainer:
    """Qt-free trainer: `train(progress, cancel)` -> list of trained detectors (f[, g])."""

    def __init__(self, cfg: Stage2Config, data: Stage2Data, n_landmarks: int,
                 device: torch.device | str = "cpu", seed: int = 0,
                 checkpoint: Path | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.n_landmarks = n_landmarks
        self.device = torch.device(device)
        self.seed = int(seed)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        torch.manual_seed(self.seed)
        self.nets = [build_detector(n_out=n_landmarks, **cfg.detector).to(self.device)
                     for _ in range(cfg.n_nets)]
        self.stride = int(getattr(self.nets[0], "stride", 1))
        self.opts = [torch.optim.Adam(n.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay) for n in self.nets]
        miles = sorted({max(1, int(round(m * cfg.steps))) for m in cfg.lr_milestones})
        self.scheds = [torch.optim.lr_scheduler.MultiStepLR(o, miles, gamma=cfg.lr_gamma)
                       for o in self.opts]
        self.norms = [LandmarkLossNorm(n_landmarks) for _ in self.nets]
        self.gstep = 0
        self.history: list[dict[str, float]] = []
        self.tr_pairs, self.ps_pairs = data.pairs()
        if len(self.tr_pairs) == 0:
            raise ValueError("Stage II needs at least one trusted landmark (the exemplar)")

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "gstep": self.gstep,
            "seed": self.seed,
            "cfg": self.cfg.to_dict(),
            "nets": [n.state_dict() for n in self.nets],
            "opts": [o.state_dict() for o in self.opts],
            "scheds": [s.state_dict() for s in self.scheds],
            "norms": [n.state_dict() for n in self.norms],
            "history": list(self.history),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, st: dict) -> None:
        self.gstep = int(st["gstep"])
        for n, s in zip(self.nets, st["nets"], strict=True):
            n.load_state_dict(s)
        for o, s in zip(self.opts, st["opts"], strict=True):
            o.load_state_dict(s)
        for sc, s in zip(self.scheds, st["scheds"], strict=True):
            sc.load_state_dict(s)
        for nm, s in zip(self.norms, st["norms"], strict=True):
            nm.load_state_dict(s)
        self.history = list(st.get("history", []))
        torch.set_rng_state(st["torch_rng"])

    def save_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        checkpoints.save(self.state_dict(), self.checkpoint)

    def try_resume(self) -> bool:
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        st = checkpoints.load(self.checkpoint, map_location=self.device)
        try:
            self.load_state_dict(st)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise LmkError(f"{self.checkpoint}: cannot resume from this checkpoint "
                           f"({type(exc).__name__}: {str(exc)[:200]}); train without --resume"
                           ) from None
        return True

    # ---- training ----------------------------------------------------------------------------
    def _pairs_for_step(self, t: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        cfg = self.cfg
        spe = cfg.steps_per_epoch
        epoch, pos = divmod(t, spe)
        tr = self.tr_pairs[rng.integers(0, len(self.tr_pairs), size=cfg.batch_trusted)]
        if len(self.ps_pairs) == 0:
            return tr, len(tr)
        perm = np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.ps_pairs))
        idx = (np.arange(cfg.batch_pseudo) + pos * cfg.batch_pseudo) % len(perm)
        return np.concatenate([tr, self.ps_pairs[perm[idx]]]), len(tr)

    def train_step(self, t: int) -> dict[str, float]:
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, t, 11])
        pairs, n_tr = self._pairs_for_step(t, rng)
        b = build_batch(self.data, pairs, n_tr, rng, cfg, self.stride)
        b = Batch(*(x.to(self.device) if torch.is_tensor(x) else x for x in (
            b.easy, b.hard, b.t_easy, b.t_hard, b.e2h, b.chan)), b.n_trusted)
        hw = tuple(b.t_easy.shape[-2:])
        epoch_f = t / cfg.steps_per_epoch
        for n in self.nets:
            n.train()
        pe, ph, pe_h, lheat, lself = [], [], [], [], []
        for n in self.nets:
            e = pick_channels(n(b.easy), b.chan)
            h = pick_channels(n(b.hard), b.chan)
            eh = transform_easy_to_hard(e, b.e2h, hw)
            pe.append(e)
            ph.append(h)
            pe_h.append(eh)
            lheat.append(0.5 * (heat_loss(e, b.t_easy, cfg.sigma) + heat_loss(h, b.t_hard, cfg.sigma)))
            lself.append(consistency_loss(h.detach(), eh.detach(), cfg.sigma))

        nb = len(pairs)
        ps_idx = torch.arange(n_tr, nb, device=self.device)
        keep = 1.0 - forget_rate(epoch_f, cfg.forget_max, cfg.ramp_epochs)
        # each net selects for the other (co-teaching); a single net selects for itself
        selected: list[torch.Tensor] = []
        for k in range(len(self.nets)):
            if cfg.selection == "none" or len(ps_idx) == 0:
                selected.append(ps_idx)
                continue
            score = lheat[k][ps_idx].detach()
            if cfg.selection == "heat+self":
                score = score + cfg.w_self * lself[k][ps_idx]
            if cfg.landmark_norm:
                score = self.norms[k].normalise(score, b.chan[ps_idx])
            selected.append(ps_idx[select_small_loss(score, keep)])
        if len(self.nets) == 2:
            selected = [selected[1], selected[0]]

        w_cross = cfg.w_cross * min(1.0, epoch_f / cfg.ramp_epochs) if cfg.ramp_epochs > 0 \
            else cfg.w_cross
        logs: dict[str, float] = {"keep": keep}
        tr_idx = torch.arange(0, n_tr, device=self.device)
        total = torch.zeros((), device=self.device)
        for k in range(len(self.nets)):
            use = torch.cat([tr_idx, selected[k]])
            loss = lheat[k][use].sum() / nb
            logs[f"heat{k}"] = float(lheat[k][use].detach().mean())
            if cfg.cross and len(self.nets) == 2:
                other = pe_h[1 - k].detach() if cfg.cross_detach else pe_h[1 - k]
                lc = consistency_loss(ph[k], other, cfg.sigma).mean()
                loss = loss + w_cross * lc
                logs[f"cross{k}"] = float(lc.detach())
            logs[f"self{k}"] = float(lself[k].mean())
            total = total + loss
        # one backward: with detached cross targets each net's loss only reaches its own weights
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in self.opts:
            opt.step()
        for s in self.scheds:
            s.step()
        return logs

    def train(self, progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
              resume: bool = False, stop_after: int | None = None) -> list[torch.nn.Module]:
        """Run to cfg.steps (or `stop_after` global steps, for tests). Cancel -> checkpoint +
        Cancelled. Resume continues exactly where the checkpoint stopped."""
        cfg = self.cfg
        if resume:
            self.try_resume()
        spe = cfg.steps_per_epoch
        clock = EtaClock(cfg.steps - self.gstep)
        start_step = self.gstep
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        last_emit = 0.0
        while self.gstep < end:
            if cancel is not None and cancel.cancelled:
                self.save_checkpoint()
                raise Cancelled()
            logs = self.train_step(self.gstep)
            self.gstep += 1
            self.history.append(logs)
            epoch, pos = divmod(self.gstep, spe)
            if pos == 0 or self.gstep == cfg.steps:
                self.save_checkpoint()
            now = time.monotonic()
            if now - last_emit > 0.5 or self.gstep == end:
                last_emit = now
                progress(ProgressEvent(
                    stage="stage2", epoch=(self.gstep - 1) // spe, epochs=cfg.epochs,
                    step=(self.gstep - 1) % spe + 1, steps=spe,
                    losses={k: round(v, 5) for k, v in logs.items()},
                    eta_s=clock.eta(self.gstep - start_step),
                    message=f"Stage II step {self.gstep}/{cfg.steps}"))
        return self.nets
