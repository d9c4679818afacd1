"""Stage I configuration: one section per learned pass (whole-image "coarse", landmark-crop
"refine"), loaded from resources/presets/stage1/<name>.json or a JSON path."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmk_studio.core.errors import LmkError

PRESET_DIR = Path(__file__).resolve().parents[3] / "resources" / "presets" / "stage1"


@dataclass
class PassConfig:
    """One registration pass: its network, its data geometry and its training schedule."""

    # data geometry: whole images resized to `size` (H, W), or crops of `crop` px taken at
    # `scale` original px per crop px around each landmark
    size: tuple[int, int] = (128, 96)
    crop: int = 64
    scale: float = 4.0
    jitter_px: float = 4.0          # extra random offset of the target crop centre (crop px)
    # network
    backbone: str = "small_cnn"
    width: int = 16
    d_model: int = 64
    heads: int = 2
    n_layers: int = 2
    dropout: float = 0.1
    window: int = 4
    global_type: str = "affine"     # none | affine | perspective | classical
    max_flow: float = 0.5
    weights: str | None = None
    # schedule
    epochs: int = 20
    steps_per_epoch: int = 10
    batch: int = 4                  # pairs per step: half synthetic, half real
    lr: float = 1e-4
    weight_decay: float = 1e-4
    n_local_train: int = 2
    n_local_infer: int = 4
    # losses
    sigma: float = 3.0
    temperature: float = 0.1
    lambda_inv: float = 0.25
    lambda_smooth: float = 1.0
    syn_start: float = 5.0
    syn_end_frac: float = 350 / 750
    local_ramp_frac: float = 250 / 750
    edge_sim: bool = True
    edge_smooth: bool = True
    use_inv: bool = True
    use_syn: bool = True
    # pseudo-landmark EMA (Eq. 4)
    ema_tau: float = 0.9
    ema_start_frac: float = 200 / 750
    ema_every: int = 1
    # label-free model selection
    holdout_frac: float = 0.15
    eval_every: int = 2
    select_per_landmark: bool = False   # crop mode: each landmark keeps its own best state
    # test-time adaptation (crop mode): per target, fine-tune the net on its own exemplar ->
    # target crops with the unsupervised losses before predicting; 0 steps = off
    tta_steps: int = 0
    tta_lr: float = 1e-3
    tta_n_local: int = 2
    tta_select: str = "best"        # best (lowest esim per landmark, start included) | last

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Stage1Config:
    name: str = "custom"
    start: str = "learned"          # "learned" (coarse pass) or "classical" (preview result)
    coarse: PassConfig | None = field(default_factory=PassConfig)
    refine: PassConfig | None = None
    torch_threads: int = 2
    # transitive consensus: each image's points also reached through its k most similar images
    # (exemplar -> neighbour -> image), per-coordinate median; 0 = off. "via": the registration
    # used for the neighbour -> image hop ("classical" flow or the learned "refine" pass);
    # "when": on the start points ("start") or on the refined points ("final").
    consensus: dict = field(default_factory=dict)
    # per-landmark candidate choice after everything else (engine.candidates): the exemplar's
    # point copied, the ECC affine alone, the preview and Stage I's answer (the primary), chosen
    # label-free per landmark over the folder; keys of engine.candidates.CandidateParams
    # (score_radii, grid, search_radius, search_window, margin) plus "on"; {} = off.
    candidates: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start": self.start, "torch_threads": self.torch_threads,
                "consensus": dict(self.consensus), "candidates": dict(self.candidates),
                "coarse": self.coarse.to_dict() if self.coarse else None,
                "refine": self.refine.to_dict() if self.refine else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stage1Config:
        known = {f.name for f in dataclasses.fields(PassConfig)}

        def sec(v: Any) -> PassConfig | None:
            if v is None:
                return None
            bad = set(v) - known
            if bad:
                raise LmkError(f"Stage I preset: unknown keys {sorted(bad)}")
            v = dict(v)
            if "size" in v:
                v["size"] = tuple(v["size"])
            return PassConfig(**v)

        cfg = cls(name=str(d.get("name", "custom")), start=str(d.get("start", "learned")),
                  coarse=sec(d.get("coarse")), refine=sec(d.get("refine")),
                  torch_threads=int(d.get("torch_threads", 2)),
                  consensus=dict(d.get("consensus") or {}),
                  candidates=dict(d.get("candidates") or {}))
        bad = set(cfg.candidates) - {"on", "score_radii", "grid", "search_radius",
                                     "search_window", "margin"}
        if bad:
            raise LmkError(f"Stage I preset: unknown candidates keys {sorted(bad)}")
        bad = set(cfg.consensus) - {"k", "via", "when"}
        if bad:
            raise LmkError(f"Stage I preset: unknown consensus keys {sorted(bad)}")
        if cfg.consensus.get("via", "classical") not in ("classical", "refine"):
            raise LmkError("Stage I preset: consensus 'via' must be classical or refine")
        if cfg.consensus.get("when", "start") not in ("start", "final"):
            raise LmkError("Stage I preset: consensus 'when' must be start or final")
        for sec_ in (cfg.coarse, cfg.refine):
            if sec_ is not None and sec_.tta_select not in ("best", "last"):
                raise LmkError("Stage I preset: tta_select must be best or last")
        if cfg.start not in ("learned", "classical"):
            raise LmkError(f"Stage I preset: start must be learned or classical, not {cfg.start}")
        if cfg.start == "learned" and cfg.coarse is None:
            raise LmkError("Stage I preset: start 'learned' needs a 'coarse' section")
        return cfg


def load_preset(name_or_path: str | Path | None) -> Stage1Config:
    """A bundled preset name ('quick', 'cpu', 'paper') or a JSON file path."""
    name = name_or_path or "cpu"
    path = Path(name)
    if not path.suffix:
        path = PRESET_DIR / f"{name}.json"
    if not path.exists():
        have = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
        raise LmkError(f"Stage I preset {name!r} not found (bundled: {', '.join(have)})")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LmkError(f"{path}: unreadable Stage I preset ({exc})") from exc
    d.setdefault("name", path.stem)
    return Stage1Config.from_dict(d)
