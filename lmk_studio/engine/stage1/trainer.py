"""Qt-free Stage I trainer for one registration pass (whole images or landmark crops).

The caller drives it: progress events every step, a cancel token polled every step, a
checkpoint at every epoch end that resumes to the same state (model, optimiser, RNGs, EMA
points, epoch), and label-free model selection on a held-out part of the folder.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lmk_studio.core.errors import LmkError
from lmk_studio.engine import checkpoints
from lmk_studio.engine.common import (
    CancelToken,
    EtaClock,
    ProgressCallback,
    ProgressEvent,
    no_progress,
)

from . import losses as L
from .config import PassConfig
from .model import EGTNet, grid_from_matrix, norm_to_px, px_to_norm, warp


# ---- data ----------------------------------------------------------------------------------
def resize_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


def downscale(img: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1:
        return img.astype(np.float32)
    h, w = img.shape
    return cv2.resize(img.astype(np.float32), (max(8, round(w / scale)), max(8, round(h / scale))),
                      interpolation=cv2.INTER_AREA)


def full_to_small(p: np.ndarray, full_hw: tuple[int, int], small_hw: tuple[int, int]) -> np.ndarray:
    """Pixel-centre convention: a pixel's centre maps to the centre of the area it covers."""
    fy, fx = full_hw[0] / small_hw[0], full_hw[1] / small_hw[1]
    return np.stack([(p[..., 0] + 0.5) / fx - 0.5, (p[..., 1] + 0.5) / fy - 0.5], -1)


def small_to_full(p: np.ndarray, full_hw: tuple[int, int], small_hw: tuple[int, int]) -> np.ndarray:
    fy, fx = full_hw[0] / small_hw[0], full_hw[1] / small_hw[1]
    return np.stack([(p[..., 0] + 0.5) * fx - 0.5, (p[..., 1] + 0.5) * fy - 0.5], -1)


def crops(img: torch.Tensor, centers: torch.Tensor, size: int) -> torch.Tensor:
    """(1, 1, H, W) image, (K, 2) centres in its px -> (K, 1, size, size) bilinear crops."""
    _, _, h, w = img.shape
    off = torch.arange(size, dtype=centers.dtype) - (size - 1) / 2
    gy, gx = torch.meshgrid(off, off, indexing="ij")
    pos = torch.stack([gx, gy], -1)[None] + centers[:, None, None, :]
    grid = px_to_norm(pos, h, w)
    return F.grid_sample(img.repeat(len(centers), 1, 1, 1), grid, mode="bilinear",
                         padding_mode="border", align_corners=True)


@dataclass
class PassData:
    """Images at the pass's working geometry and the current point estimates (its px)."""

    images: list[np.ndarray]          # float32 HxW in [0, 1], working resolution
    points: np.ndarray                # (M, N, 2) working px, NaN unknown
    known: np.ndarray                 # (M,) bool: points are labels (the exemplar)
    exemplar: int = 0
    tensors: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tensors = [torch.from_numpy(np.ascontiguousarray(i))[None, None] for i in self.images]


# ---- trainer -------------------------------------------------------------------------------
class PassTrainer:
    """Trains one EGTNet pass; `mode` is "whole" (fixed-size images) or "crop"."""

    def __init__(self, cfg: PassConfig, data: PassData, mode: str, seed: int = 0,
                 device: torch.device | str = "cpu", stage: str = "stage1",
                 given: dict[int, np.ndarray] | None = None) -> None:
        self.cfg, self.data, self.mode, self.stage = cfg, data, mode, stage
        self.device = torch.device(device)
        self.seed = seed
        torch.manual_seed(seed)
        gtype = "given" if cfg.global_type == "classical" else cfg.global_type
        self.net = EGTNet(cfg.backbone, cfg.width, cfg.d_model, cfg.heads, cfg.n_layers,
                          cfg.dropout, cfg.window, gtype, cfg.max_flow, cfg.weights).to(self.device)
        self.given = given or {}
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(seed)
        m = len(data.images)
        others = [i for i in range(m) if i != data.exemplar]
        rng = np.random.default_rng(seed)
        n_hold = int(round(cfg.holdout_frac * len(others))) if len(others) >= 4 else 0
        hold = set(rng.choice(others, size=n_hold, replace=False).tolist()) if n_hold else set()
        self.holdout = sorted(hold)
        self.train_ids = [i for i in range(m) if i not in hold]
        self.ema = data.points.copy()
        self.start = data.points.copy()     # the points prediction starts from (crop mode)
        self.ema_started = False
        self.epoch = 0
        self.best_val = float("inf")
        self.best_state: dict | None = None
        self.lm_best_val: np.ndarray | None = None     # per-landmark selection (crop mode)
        self.lm_best_epoch: np.ndarray | None = None
        self.lm_states: dict[int, dict] = {}
        self.history: list[dict] = []

    # -- pairs
    def _pair_batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                           torch.Tensor | None]:
        """k real pairs (src, dst, src points px, given matrices)."""
        ids = torch.tensor(self.train_ids)
        a = ids[torch.randint(len(ids), (k,), generator=self.gen)].tolist()
        b = ids[torch.randint(len(ids), (k,), generator=self.gen)].tolist()
        return self._make_pairs(a, b, jitter=True)

    def _make_pairs(self, a: list[int], b: list[int], jitter: bool):
        cfg, d = self.cfg, self.data
        if self.mode == "whole":
            src = torch.cat([d.tensors[i] for i in a])
            dst = torch.cat([d.tensors[i] for i in b])
            pts = torch.from_numpy(np.stack([self._pts(i) for i in a])).float()
            given = None
            if self.net.global_type == "given":
                given = torch.from_numpy(np.stack([self._given(i, j) for i, j in zip(a, b,
                                                                                      strict=True)]))
            return src, dst, pts, given
        n = d.points.shape[1]
        src_l, dst_l = [], []
        for i, j in zip(a, b, strict=True):
            lm = int(torch.randint(n, (1,), generator=self.gen))
            pa, pb = self._pts(i)[lm], self._pts(j)[lm]
            if not (np.isfinite(pa).all() and np.isfinite(pb).all()):
                pa = pb = np.array([d.images[i].shape[1] / 2, d.images[i].shape[0] / 2])
            if jitter and cfg.jitter_px > 0:
                pb = pb + (torch.randn(2, generator=self.gen).numpy() * cfg.jitter_px)
            src_l.append(crops(d.tensors[i], torch.tensor(pa[None]).float(), cfg.crop))
            dst_l.append(crops(d.tensors[j], torch.tensor(pb[None]).float(), cfg.crop))
        c = (cfg.crop - 1) / 2
        pts = torch.full((len(a), 1, 2), c)
        return torch.cat(src_l), torch.cat(dst_l), pts, None

    def _pts(self, i: int) -> np.ndarray:
        if self.data.known[i]:
            return self.data.points[i]
        if self.mode == "crop" or self.ema_started:
            return self.ema[i]
        return np.full_like(self.data.points[i], np.nan)

    def _given(self, i: int, j: int) -> np.ndarray:
        """Sampling matrix dst -> src from per-image matrices (each: image -> exemplar frame)."""
        def h3(k: int) -> np.ndarray:
            m = self.given.get(k, np.eye(2, 3))
            return np.vstack([m, [0, 0, 1]])
        return (np.linalg.inv(h3(i)) @ h3(j))[:2].astype(np.float32)

    # -- one step
    def _losses(self, src, dst, pts, given, frac: float, syn: torch.Tensor | None,
                n_local: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        h, w = src.shape[-2:]
        ok = torch.isfinite(pts).all(-1, keepdim=True)
        # NaN coordinates must never reach grid_sample (its backward indexes with them)
        pn = px_to_norm(torch.where(ok, pts, torch.zeros_like(pts)), h, w)
        out = self.net(src, dst, n_local, pn, given)
        valid = L.valid_mask(src, out["grids"][0]) * L.valid_mask(dst, out["grids"][0])
        res = {"global": L.global_l1(out["warped"][0], dst, valid)}
        esim = smooth = inv = synl = torch.zeros((), device=src.device)
        if syn is not None:
            synl = synl + L.syn_loss(out["grids"][0], syn)
        for k, flow in enumerate(out["flows"]):
            wk, prev = out["warped"][k + 1], out["warped"][k]
            ppx = norm_to_px(out["points"][k + 1].detach(), h, w)
            ppx = torch.where(ok, ppx, torch.full_like(ppx, float("nan")))
            mask = L.landmark_mask(ppx, h, w, cfg.sigma) if cfg.edge_sim else None
            esim = esim + L.esim_loss(wk, dst, mask, cfg.edge_sim)
            smooth = smooth + L.esmooth_loss(flow, wk, cfg.temperature, cfg.edge_smooth)
            if cfg.use_inv:
                inv = inv + L.inv_loss(flow, prev, dst)
            if syn is not None:
                synl = synl + L.syn_loss(out["grids"][k + 1], syn)
        k = max(1, len(out["flows"]))
        res.update(esim=esim / k, smooth=smooth / k, inv=inv / k, syn=synl / (k + 1))
        return res

    def _total(self, parts: dict[str, torch.Tensor], frac: float) -> torch.Tensor:
        cfg = self.cfg
        lam1 = L.local_weight(frac, cfg.local_ramp_frac)
        lam3 = L.syn_weight(frac, cfg.syn_start, cfg.syn_end_frac) if cfg.use_syn else 0.0
        local = (parts["esim"] + cfg.lambda_smooth * parts["smooth"]
                 + cfg.lambda_inv * parts["inv"])
        glob = parts["global"] if self.net.global_type in ("affine", "perspective") else 0.0
        return glob + lam1 * local + lam3 * parts["syn"]

    def step(self, frac: float) -> dict[str, float]:
        cfg = self.cfg
        self.net.train()
        n_syn = cfg.batch // 2 if cfg.use_syn else 0
        src, dst, pts, given = self._pair_batch(cfg.batch - n_syn)
        parts_r = self._losses(src, dst, pts, given, frac, None, cfg.n_local_train)
        total = self._total(parts_r, frac)
        logs = {k: float(v.detach()) for k, v in parts_r.items()}
        if n_syn:
            s2, _, p2, g2 = self._pair_batch(n_syn)
            h, w = s2.shape[-2:]
            mats = L.random_perspective(n_syn, self.gen)
            tgt = grid_from_matrix(mats, h, w)
            d2 = warp(s2, tgt)
            if g2 is not None:
                g2 = torch.eye(2, 3).expand(n_syn, 2, 3).contiguous()
            parts_s = self._losses(s2, d2, p2, g2, frac, tgt, cfg.n_local_train)
            lam3 = L.syn_weight(frac, cfg.syn_start, cfg.syn_end_frac)
            total = total + lam3 * parts_s["syn"]
            logs["syn"] = float(parts_s["syn"].detach())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        logs["total"] = float(total.detach())
        return logs

    # -- inference on the exemplar -> targets
    @torch.no_grad()
    def predict(self, targets: list[int], n_local: int | None = None,
                net: EGTNet | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Points of the exemplar carried to each target (working px), and the per-step points."""
        net = net or self.net
        net.eval()
        n_local = n_local or self.cfg.n_local_infer
        d, ex = self.data, self.data.exemplar
        n = d.points.shape[1]
        out = np.full((len(d.images), n, 2), np.nan)
        steps: dict[int, np.ndarray] = {}
        for t in targets:
            if self.mode == "whole":
                src, dst = d.tensors[ex], d.tensors[t]
                h, w = src.shape[-2:]
                given = (torch.from_numpy(self._given(ex, t))[None]
                         if net.global_type == "given" else None)
                p = torch.from_numpy(np.nan_to_num(d.points[ex])).float()[None]
                r = net(src, dst, n_local, px_to_norm(p, h, w), given)
                allp = np.stack([norm_to_px(q, h, w)[0].numpy() for q in r["points"]])
            else:
                c = (self.cfg.crop - 1) / 2
                ok = np.isfinite(d.points[ex]).all(-1) & np.isfinite(self._pts(t)).all(-1)
                allp = np.full((n_local + 1, n, 2), np.nan)
                if ok.any():
                    src = crops(d.tensors[ex], torch.from_numpy(d.points[ex][ok]).float(),
                                self.cfg.crop)
                    start = self._pts(t)[ok]
                    dst = crops(d.tensors[t], torch.from_numpy(start).float(), self.cfg.crop)
                    p = torch.full((int(ok.sum()), 1, 2), c)
                    r = net(src, dst, n_local, px_to_norm(p, self.cfg.crop, self.cfg.crop))
                    for k, q in enumerate(r["points"]):
                        allp[k, ok] = start + norm_to_px(q, self.cfg.crop,
                                                         self.cfg.crop)[:, 0].numpy() - c
            invalid = ~np.isfinite(d.points[ex]).all(-1)
            allp[:, invalid] = np.nan
            out[t] = allp[-1]
            steps[t] = allp
        return out, steps

    def adapt_predict(self, targets: list[int], progress: ProgressCallback = no_progress,
                      cancel: CancelToken | None = None) -> tuple[np.ndarray,
                                                                  dict[int, np.ndarray]]:
        """Crop mode, test-time adaptation (instance optimisation): for each target, a copy of
        the current net is fine-tuned for `tta_steps` Adam steps on that target's own
        exemplar -> target crops (all landmarks, one batch) with the unsupervised local losses
        (esim + smoothness + inverse consistency), no labels. Each landmark then takes the
        candidate (its start point, or the net after 0..tta_steps updates) chosen by
        `tta_select`: "best" = lowest esim of that pair (label-free), "last" = the final net.
        Returns points (working px) and per-target [previous local step, final] points."""
        cfg, d, ex = self.cfg, self.data, self.data.exemplar
        base = copy.deepcopy(self.net.state_dict())
        n = d.points.shape[1]
        c = (cfg.crop - 1) / 2
        n_loc = max(1, cfg.tta_n_local)
        out = np.full((len(d.images), n, 2), np.nan)
        steps: dict[int, np.ndarray] = {}
        self.tta_choice = np.full((len(d.images), n), -2, dtype=int)  # -1 start, k = after k
        self.tta_gain = np.full((len(d.images), n), np.nan)   # esim(start) - esim(chosen)
        clock = EtaClock(len(targets))
        try:
            for it, t in enumerate(targets, 1):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                ok = np.isfinite(d.points[ex]).all(-1) & np.isfinite(self.start[t]).all(-1)
                allp = np.full((2, n, 2), np.nan)
                if ok.any():
                    pts, prev, choice, gain = self._adapt_one(t, ok, base, n_loc, c)
                    allp[0, ok], allp[1, ok] = prev, pts
                    self.tta_choice[t, ok] = choice
                    self.tta_gain[t, ok] = gain
                out[t] = allp[1]
                steps[t] = allp
                progress(ProgressEvent(stage=self.stage + "-adapt", epoch=0, epochs=1, step=it,
                                       steps=len(targets), eta_s=clock.eta(it),
                                       message=f"test-time adaptation {it}/{len(targets)}"))
        finally:
            self.net.load_state_dict(base)
        return out, steps

    def _adapt_one(self, t: int, ok: np.ndarray, base: dict, n_loc: int, c: float):
        cfg, d, ex = self.cfg, self.data, self.data.exemplar
        self.net.load_state_dict(base)
        self.net.eval()                               # dropout off: a deterministic objective
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.tta_lr)
        src = crops(d.tensors[ex], torch.from_numpy(d.points[ex][ok]).float(), cfg.crop)
        start = self.start[t][ok]
        dst = crops(d.tensors[t], torch.from_numpy(start).float(), cfg.crop)
        k = int(ok.sum())
        p0 = torch.full((k, 1, 2), c)
        pn = px_to_norm(p0, cfg.crop, cfg.crop)
        mask0 = L.landmark_mask(p0, cfg.crop, cfg.crop, cfg.sigma) if cfg.edge_sim else None
        with torch.no_grad():
            best = L.esim_per_sample(src, dst, mask0, cfg.edge_sim).numpy()
        e_start = best.copy()
        best_p, best_prev = start.copy(), start.copy()
        choice = np.full(k, -1, dtype=int)
        last_p = last_prev = start
        for s in range(cfg.tta_steps + 1):
            train = s < cfg.tta_steps
            with torch.set_grad_enabled(train):
                r = self.net(src, dst, n_loc, pn)
                esim = smooth = inv = torch.zeros(())
                for j, flow in enumerate(r["flows"]):
                    wk, prv = r["warped"][j + 1], r["warped"][j]
                    m = (L.landmark_mask(norm_to_px(r["points"][j + 1].detach(), cfg.crop,
                                                    cfg.crop), cfg.crop, cfg.crop, cfg.sigma)
                         if cfg.edge_sim else None)
                    e_s = L.esim_per_sample(wk, dst, m, cfg.edge_sim)
                    esim = esim + e_s.mean()
                    smooth = smooth + L.esmooth_loss(flow, wk, cfg.temperature, cfg.edge_smooth)
                    if cfg.use_inv:
                        inv = inv + L.inv_loss(flow, prv, dst)
                score = e_s.detach().numpy()          # the last step's esim, per pair
                q = [start + norm_to_px(x.detach(), cfg.crop, cfg.crop)[:, 0].numpy() - c
                     for x in r["points"]]
                last_p, last_prev = q[-1], q[-2]
                better = score < best - 1e-6      # float noise is not an improvement
                best[better] = score[better]
                best_p[better], best_prev[better] = q[-1][better], q[-2][better]
                choice[better] = s
                if train:
                    nf = len(r["flows"])
                    loss = (esim + cfg.lambda_smooth * smooth + cfg.lambda_inv * inv) / nf
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
                    opt.step()
        if cfg.tta_select == "last":
            return last_p, last_prev, np.full(k, cfg.tta_steps, dtype=int), e_start - score
        return best_p, best_prev, choice, e_start - best

    @torch.no_grad()
    def register_crops(self, src: int, src_pts: np.ndarray, dst: int, dst_start: np.ndarray,
                       n_local: int | None = None) -> np.ndarray:
        """Crop mode, any image pair: carry `src_pts` (working px of image `src`) to image `dst`,
        whose crops are centred on `dst_start`; NaN where either is unknown."""
        net, cfg, d = self.net, self.cfg, self.data
        net.eval()
        out = np.full(src_pts.shape, np.nan)
        ok = np.isfinite(src_pts).all(-1) & np.isfinite(dst_start).all(-1)
        if not ok.any():
            return out
        c = (cfg.crop - 1) / 2
        a = crops(d.tensors[src], torch.from_numpy(src_pts[ok]).float(), cfg.crop)
        b = crops(d.tensors[dst], torch.from_numpy(dst_start[ok]).float(), cfg.crop)
        p = torch.full((int(ok.sum()), 1, 2), c)
        r = net(a, b, n_local or cfg.n_local_infer, px_to_norm(p, cfg.crop, cfg.crop))
        out[ok] = dst_start[ok] + norm_to_px(r["points"][-1], cfg.crop, cfg.crop)[:, 0].numpy() - c
        return out

    @torch.no_grad()
    def val_loss(self) -> float:
        """Label-free selection score: esim + global of exemplar -> held-out images."""
        ids = self.holdout or [i for i in self.train_ids if i != self.data.exemplar][:4]
        if not ids:
            return 0.0
        self.net.eval()
        if self.mode == "crop":
            return self._crop_val(list(ids))
        a = [self.data.exemplar] * len(ids)
        src, dst, pts, given = self._make_pairs(a, list(ids), jitter=False)
        parts = self._losses(src, dst, pts, given, 1.0, None, self.cfg.n_local_train)
        return float(parts["esim"] + parts["global"])

    def _crop_val(self, ids: list[int]) -> float:
        """Crop mode: exemplar crop at each label -> held-out crop at its start point, every
        (image, landmark), no random draws (the score must not move with the RNG stream), at the
        inference depth: the same question the prediction answers, scored without labels."""
        per = self.crop_val_per_landmark(ids)
        return float(np.nanmean(per)) if np.isfinite(per).any() else 0.0

    @torch.no_grad()
    def crop_val_per_landmark(self, ids: list[int]) -> np.ndarray:
        """(N,) held-out esim per landmark (NaN where no held-out image has that landmark)."""
        cfg, d, ex = self.cfg, self.data, self.data.exemplar
        c = (cfg.crop - 1) / 2
        n = d.points.shape[1]
        out = np.full(n, np.nan)
        for j in range(n):
            if not np.isfinite(d.points[ex, j]).all():
                continue
            tg = [t for t in ids if np.isfinite(self.start[t, j]).all()]
            if not tg:
                continue
            src = crops(d.tensors[ex], torch.from_numpy(d.points[ex, j][None]).float(),
                        cfg.crop).repeat(len(tg), 1, 1, 1)
            dst = torch.cat([crops(d.tensors[t], torch.from_numpy(self.start[t, j][None]).float(),
                                   cfg.crop) for t in tg])
            pts = torch.full((len(tg), 1, 2), c)
            out[j] = float(self._losses(src, dst, pts, None, 1.0, None, cfg.n_local_infer)["esim"])
        return out

    def _track_landmarks(self) -> None:
        """Per-landmark label-free selection: remember, for each landmark, the state with the
        lowest held-out esim of that landmark (epoch 0 = the untrained pass included)."""
        ids = self.holdout or [i for i in self.train_ids if i != self.data.exemplar][:4]
        if not ids:
            return
        self.net.eval()
        per = self.crop_val_per_landmark(ids)
        if self.lm_best_val is None:
            self.lm_best_val = np.full(per.shape, np.inf)
            self.lm_best_epoch = np.zeros(per.shape, dtype=int)
        better = np.isfinite(per) & (per < self.lm_best_val)
        if better.any():
            self.lm_best_val[better] = per[better]
            self.lm_best_epoch[better] = self.epoch
            self.lm_states[self.epoch] = copy.deepcopy(self.net.state_dict())
        used = set(self.lm_best_epoch.tolist())
        self.lm_states = {e: st for e, st in self.lm_states.items() if e in used}

    def landmark_states(self) -> dict[int, list[int]] | None:
        """{state epoch: landmarks it predicts} when per-landmark selection ran."""
        if self.lm_best_epoch is None:
            return None
        groups: dict[int, list[int]] = {}
        for j, e in enumerate(self.lm_best_epoch.tolist()):
            groups.setdefault(int(e), []).append(j)
        return groups

    def update_ema(self) -> None:
        """Eq. 4: EMA of the pseudo-landmarks of every non-exemplar image."""
        targets = [i for i in range(len(self.data.images)) if not self.data.known[i]]
        pred, _ = self.predict(targets, self.cfg.n_local_train)
        tau = self.cfg.ema_tau
        for t in targets:
            old = self.ema[t]
            new = pred[t]
            if self.mode == "whole" and not self.ema_started:
                self.ema[t] = new
            else:
                self.ema[t] = np.where(np.isfinite(old), tau * old + (1 - tau) * new, new)
        self.ema_started = True

    # -- checkpoints
    def state(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "epoch": self.epoch,
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "py_rng": random.getstate(), "np_rng": np.random.get_state(),
                "ema": self.ema.copy(), "ema_started": self.ema_started,
                "best_val": self.best_val, "best_state": self.best_state,
                "lm_best_val": self.lm_best_val, "lm_best_epoch": self.lm_best_epoch,
                "lm_states": self.lm_states,
                "history": list(self.history), "holdout": self.holdout}

    def load_state(self, s: dict) -> None:
        self.net.load_state_dict(s["net"])
        self.opt.load_state_dict(s["opt"])
        self.epoch = int(s["epoch"])
        self.gen.set_state(torch.as_tensor(s["gen"], dtype=torch.uint8))
        torch.set_rng_state(torch.as_tensor(s["torch_rng"], dtype=torch.uint8))
        random.setstate(s["py_rng"])
        kind, key, *rest = s["np_rng"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
        self.ema = torch.as_tensor(s["ema"]).cpu().numpy().copy()
        self.ema_started = bool(s["ema_started"])
        self.best_val = float(s["best_val"])
        self.best_state = s["best_state"]
        self.lm_best_val = s.get("lm_best_val")
        self.lm_best_epoch = s.get("lm_best_epoch")
        self.lm_states = dict(s.get("lm_states") or {})
        self.history = list(s["history"])
        self.holdout = list(s["holdout"])

    def save(self, path: Path) -> None:
        checkpoints.save(self.state(), path)

    # -- the loop
    def fit(self, progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
            checkpoint: Path | None = None, resume: bool = False) -> EGTNet:
        cfg = self.cfg
        if resume and checkpoint is not None and checkpoint.exists():
            st = checkpoints.load(checkpoint)
            try:
                self.load_state(st)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
                raise LmkError(f"{checkpoint}: cannot resume from this checkpoint "
                               f"({type(exc).__name__}: {str(exc)[:200]}); train without "
                               "--resume") from None
        total = cfg.epochs * cfg.steps_per_epoch
        clock = EtaClock(max(1, total - self.epoch * cfg.steps_per_epoch))
        done0 = self.epoch * cfg.steps_per_epoch
        t0 = time.monotonic()
        if self.epoch == 0 and self.best_state is None and cfg.epochs > 0:
            # the untrained pass (identity flows) is a candidate too: if training does not
            # lower the held-out label-free loss, the pass leaves its start points alone
            v = self.val_loss()
            self.best_val = v
            self.best_state = copy.deepcopy(self.net.state_dict())
            self.history.append({"epoch": 0, "val": v})
            if cfg.select_per_landmark and self.mode == "crop":
                self._track_landmarks()
        while self.epoch < cfg.epochs:
            e = self.epoch
            if (e / cfg.epochs >= cfg.ema_start_frac and e % max(1, cfg.ema_every) == 0
                    and (self.mode == "crop" or e > 0)):
                self.update_ema()
            logs: dict[str, float] = {}
            for s in range(cfg.steps_per_epoch):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                frac = (e * cfg.steps_per_epoch + s) / max(1, total)
                for g in self.opt.param_groups:
                    g["lr"] = cfg.lr * L.lr_factor(frac)
                logs = self.step(frac)
                done = e * cfg.steps_per_epoch + s + 1
                progress(ProgressEvent(stage=self.stage, epoch=e, epochs=cfg.epochs, step=s + 1,
                                       steps=cfg.steps_per_epoch, losses=logs,
                                       eta_s=clock.eta(done - done0),
                                       message=f"{self.stage}: epoch {e + 1}/{cfg.epochs}"))
            self.epoch = e + 1
            rec = {"epoch": self.epoch, **logs}
            if self.epoch % max(1, cfg.eval_every) == 0 or self.epoch == cfg.epochs:
                v = self.val_loss()
                rec["val"] = v
                if v <= self.best_val:
                    self.best_val = v
                    self.best_state = copy.deepcopy(self.net.state_dict())
                if cfg.select_per_landmark and self.mode == "crop":
                    self._track_landmarks()
            self.history.append(rec)
            if checkpoint is not None:
                self.save(checkpoint)
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        self.train_seconds = time.monotonic() - t0
        return self.net
