"""Trained Stage II model: inference on one image at a time, original-pixel output.

Inference per landmark: a patch centred on the Stage-I point, decoded sub-pixel by both
detectors; the patch is re-centred on the result and decoded again (`infer_iterations`), then
four shifted patches (test-time augmentation) are added. The final point is the mean over
detectors and views; the per-detector / per-view points feed the confidence model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmk_studio.core.errors import LmkError
from lmk_studio.engine import checkpoints

from .config import Stage2Config
from .decode import decode_heatmaps
from .detectors import build_detector
from .trainer import down_to_orig, orig_to_down
from .views import gaussian_heatmaps, heatmap_to_input, warp


@dataclass
class RawPrediction:
    """All signals of one image's prediction (original px)."""

    points: np.ndarray        # (N, 2) final; NaN where no start point was given
    per_view: np.ndarray      # (V, K, N, 2) every view x detector
    peaks: np.ndarray         # (V, K, N)
    spreads: np.ndarray       # (V, K, N) original px
    init: np.ndarray          # (N, 2) the start (Stage-I) points


class Stage2Model:
    """Detectors + config + confidence calibration; the unit saved per Stage II run."""

    def __init__(self, cfg: Stage2Config, n_landmarks: int, nets: list[torch.nn.Module],
                 calibration: dict | None = None, device: torch.device | str = "cpu",
                 coarse: Stage2Model | None = None) -> None:
        self.cfg = cfg
        self.coarse = coarse
        self.n_landmarks = n_landmarks
        self.nets = nets
        self.device = torch.device(device)
        self.calibration = calibration or {}
        self.stride = int(getattr(nets[0], "stride", 1))
        for n in self.nets:
            n.eval()
            # channels-last convolutions: the same numbers, measured ~20 % faster on CPU for the
            # U-Net's many small patches (what predicting a new patient spends its time on)
            n.to(memory_format=torch.channels_last)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        checkpoints.save(self._state(), path)

    def _state(self) -> dict:
        return {"format": "lmk_studio.stage2/1", "cfg": self.cfg.to_dict(),
                "n_landmarks": self.n_landmarks, "nets": [n.state_dict() for n in self.nets],
                "calibration": self.calibration,
                "coarse": self.coarse._state() if self.coarse is not None else None}

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> Stage2Model:
        """Tensors and plain data only (a project's files are untrusted input)."""
        st = checkpoints.load(path, map_location=device)
        try:
            return cls._from_state(st, device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, LmkError) as exc:
            raise LmkError(f"{path}: not a Stage II model of this version ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); train Stage II again") from None

    @classmethod
    def _from_state(cls, st: dict, device: torch.device | str) -> Stage2Model:
        cfg = Stage2Config.from_dict(st["cfg"])
        nets = []
        for sd in st["nets"]:
            n = build_detector(n_out=st["n_landmarks"], **cfg.detector)
            n.load_state_dict(sd)
            nets.append(n.to(device))
        coarse = cls._from_state(st["coarse"], device) if st.get("coarse") else None
        return cls(cfg, st["n_landmarks"], nets, st.get("calibration"), device, coarse)

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, img: torch.Tensor, centers: np.ndarray, offsets: np.ndarray,
             lms: np.ndarray, anchors: np.ndarray | None = None, prior_sigma: float = 0.0,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patches at centers[j] + offsets[v] for landmarks lms -> points (V,K,L,2) down px.

        With a prior, each heatmap is multiplied by a Gaussian (sigma in down px) around the
        landmark's anchor (its start point at this level)."""
        p = self.cfg.patch
        half = (p - 1) / 2.0
        mats, chans, anc = [], [], []
        for off in offsets:
            for k, (j, c) in enumerate(zip(lms, centers, strict=True)):
                m = np.eye(3)
                m[:2, 2] = c + off - half
                mats.append(m)
                chans.append(j)
                if anchors is not None:
                    anc.append(anchors[k] - m[:2, 2])
        mt = torch.as_tensor(np.array(mats), dtype=torch.float32, device=self.device)
        src = img.expand(len(mats), -1, -1, -1)
        patches = warp(src, mt, (p, p), padding="border").contiguous(
            memory_format=torch.channels_last)
        chan = torch.as_tensor(chans, device=self.device)
        v, ll = len(offsets), len(lms)
        pts, peaks, spreads = [], [], []
        for net in self.nets:
            hm = net(patches)[torch.arange(len(mats), device=self.device), chan][:, None]
            if anchors is not None and prior_sigma > 0:
                hm = hm.clamp(min=0) * self._prior(np.array(anc), hm.shape[-2:], prior_sigma)
            d = decode_heatmaps(hm, method=self.cfg.decode)
            q = heatmap_to_input(d.points[:, 0].double().cpu().numpy(), self.stride)
            q = q + (np.array(mats)[:, :2, 2])
            pts.append(q.reshape(v, ll, 2))
            peaks.append(d.peak[:, 0].cpu().numpy().reshape(v, ll))
            spreads.append(d.spread[:, 0].cpu().numpy().reshape(v, ll) * self.stride)
        return (np.stack(pts, axis=1), np.stack(peaks, axis=1), np.stack(spreads, axis=1))

    def _prior(self, anchors_in: np.ndarray, hw: tuple[int, int], sigma: float) -> torch.Tensor:
        """(B,1,h,w) Gaussian around anchors (patch input px) on the heatmap grid; the floor
        keeps a peak far from the anchor decodable (it only loses, it does not vanish)."""
        s = self.stride
        a = torch.as_tensor((anchors_in - (s - 1) / 2) / s, dtype=torch.float32)[:, None]
        g = gaussian_heatmaps(a, tuple(hw), sigma / s)
        return (g + 1e-4).to(self.device)

    def predict_down(self, down: np.ndarray, factor: tuple[float, float],
                     init_orig: np.ndarray, coarse_down: np.ndarray | None = None,
                     coarse_factor: tuple[float, float] | None = None) -> RawPrediction:
        """One downscaled image + start points (orig px, NaN = none) -> RawPrediction.

        With a coarse level, it runs first (on `coarse_down`) and the fine level starts from its
        answer; `init` of the result stays the caller's start point (Stage I)."""
        n = self.n_landmarks
        init_orig = np.asarray(init_orig, dtype=np.float64).reshape(n, 2)
        if self.coarse is not None:
            if coarse_down is None or coarse_factor is None:
                raise ValueError("this Stage II model is a cascade: pass the coarse image too")
            mid = self.coarse.predict_down(coarse_down, coarse_factor, init_orig).points
            raw = self._predict_level(down, factor, mid)
            raw.init = init_orig
            return raw
        return self._predict_level(down, factor, init_orig)

    def _predict_level(self, down: np.ndarray, factor: tuple[float, float],
                       init_orig: np.ndarray) -> RawPrediction:
        cfg = self.cfg
        n = self.n_landmarks
        lms = np.flatnonzero(np.isfinite(init_orig).all(axis=1))
        img = torch.from_numpy(np.ascontiguousarray(down, dtype=np.float32))[None, None].to(
            self.device)
        centers = orig_to_down(init_orig[lms], factor)
        anchors = centers.copy()
        prior = cfg.prior_px / float(np.sqrt(factor[0] * factor[1])) if cfg.prior_px > 0 else 0.0
        s = cfg.tta_shift
        tta = np.array([[0, 0], [s, s], [-s, s], [s, -s], [-s, -s]], dtype=np.float64)
        iters = max(1, cfg.infer_iterations)
        for it in range(iters):
            last = it == iters - 1
            offs = tta if (last and s > 0) else tta[:1]
            pts, peaks, spreads = self._run(img, centers, offs, lms, anchors, prior)
            if not last:
                centers = pts[0].mean(axis=0)
        k = len(self.nets)
        v = len(offs)
        final = np.full((n, 2), np.nan)
        per_view = np.full((v, k, n, 2), np.nan)
        pk = np.full((v, k, n), np.nan)
        sp = np.full((v, k, n), np.nan)
        if len(lms):
            per_view[:, :, lms] = down_to_orig(pts, factor)
            final[lms] = per_view[:, :, lms].reshape(-1, len(lms), 2).mean(axis=0)
            pk[:, :, lms] = peaks
            fx, fy = factor
            sp[:, :, lms] = spreads * float(np.sqrt(fx * fy))
        return RawPrediction(final, per_view, pk, sp, init_orig)
