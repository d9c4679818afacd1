"""Stage II configuration and presets (resources/presets/stage2/<name>.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from lmk_studio.core.errors import LmkError
from lmk_studio.core.resources import resource_path

from .views import ViewConfig


@dataclass
class Stage2Config:
    """Every switch of the Table 5 ablation is here: n_nets, selection, w_self, cross.

    Geometry: images are downscaled by `scale` (original px per patch px); each (image, landmark)
    pair is a `patch` x `patch` crop around the landmark's Stage-I point, so the detector works
    near original resolution instead of on a whole-image map whose cells are 20+ px.
    """

    name: str = "custom"
    detector: dict = field(default_factory=lambda: {"kind": "unet", "base": 12, "depth": 3})
    patch: int = 48
    scale: float = 4.0
    sigma: float = 2.0
    steps: int = 400
    steps_per_epoch: int = 40
    batch_trusted: int = 8
    batch_pseudo: int = 16
    lr: float = 1e-3
    lr_milestones: tuple[float, ...] = (0.6, 0.8)
    lr_gamma: float = 0.1
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    n_nets: int = 2                 # 2 = co-teaching f, g; 1 = plain retraining / self-selection
    selection: str = "heat+self"    # "none" | "heat" | "heat+self"  (L_filter, Eq. 19)
    w_self: float = 0.5             # w of Eq. 19
    forget_max: float = 0.5         # share of pseudo pairs dropped per batch at full ramp
    ramp_epochs: float = 3.0        # epochs to ramp forget rate and cross weight
    landmark_norm: bool = True      # rank each pair against its own landmark's running loss
    cross: bool = True              # L_con^cross (Eq. 20)
    w_cross: float = 1.0
    cross_detach: bool = True       # the other net's easy view is a target (FixMatch-style)
    views: ViewConfig = field(default_factory=ViewConfig)
    infer_iterations: int = 2       # re-centre the patch on the prediction and predict again
    tta_shift: float = 4.0          # patch px; 4 shifted views give the TTA spread signal
    decode: str = "gaussian"
    prior_px: float = 0.0           # Gaussian prior (sigma, orig px) around this level's start
                                    # point, multiplied into the heatmap: MAP instead of ML, so
                                    # a look-alike structure far from Stage I cannot win; 0 = off
    calib_warps: int = 6            # synthetic warps per trusted image for confidence fitting
    tolerance_mm: float = 2.0       # confidence = 1/(1+(E/tol)^2); tol in px when no spacing
    tolerance_px: float = 16.0
    coarse: dict | None = None      # overrides for a coarser first level (cascade), e.g. scale 8

    def coarse_config(self) -> Stage2Config | None:
        """The coarse level: this config with `coarse` overrides (wider context, fewer steps)."""
        if not self.coarse:
            return None
        d = self.to_dict()
        d.pop("coarse")
        d.update(self.coarse)
        d["name"] = f"{self.name}-coarse"
        return Stage2Config.from_dict(d)

    @property
    def epochs(self) -> int:
        return max(1, -(-self.steps // self.steps_per_epoch))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Stage2Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"description"})
        if unknown:
            raise LmkError(f"unknown Stage II preset keys: {', '.join(unknown)}")
        kw = {k: v for k, v in d.items() if k in known}
        if "views" in kw and isinstance(kw["views"], dict):
            kw["views"] = ViewConfig(**kw["views"])
        if "lr_milestones" in kw:
            kw["lr_milestones"] = tuple(kw["lr_milestones"])
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        cfg = cls(**kw)
        if cfg.selection not in ("none", "heat", "heat+self"):
            raise LmkError(f"Stage II selection must be none, heat or heat+self, not "
                           f"{cfg.selection!r}")
        if cfg.n_nets not in (1, 2):
            raise LmkError("Stage II n_nets must be 1 or 2")
        return cfg


def preset_dir() -> Path:
    return resource_path("presets", "stage2")


def load_preset(name_or_path: str | Path | None) -> Stage2Config:
    """A bundled preset name ("quick", "cpu", "paper") or a path to a JSON file."""
    name = name_or_path or "cpu"
    p = Path(name)
    if p.suffix != ".json":
        p = preset_dir() / f"{name}.json"
    if not p.exists():
        avail = ", ".join(sorted(x.stem for x in preset_dir().glob("*.json")))
        raise LmkError(f"Stage II preset {name!r} not found ({p}); available: {avail}")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LmkError(f"{p}: cannot read Stage II preset ({exc})") from exc
    d.setdefault("name", p.stem)
    return Stage2Config.from_dict(d)
