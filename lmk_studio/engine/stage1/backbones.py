"""Stage I backbones behind one interface: (B, 3, H, W) pair tensor -> maps at strides 32/16/8/4.

Light torch-only encoders serve the CPU presets (Table 3 shows a UNet backbone stays competitive);
any timm model (HRNet-W18 for the paper preset) is used through `features_only=True`. ImageNet
weights are loaded only from local caches or a file path: this module never downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmk_studio.core.errors import LmkError

STRIDES = (32, 16, 8, 4)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Plain strided encoder: the cheapest backbone that still gives all four strides."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _block(3, w, 2)            # /2
        self.s4 = _block(w, 2 * w, 2)          # /4
        self.s8 = _block(2 * w, 4 * w, 2)      # /8
        self.s16 = _block(4 * w, 4 * w, 2)     # /16
        self.s32 = _block(4 * w, 4 * w, 2)     # /32
        self.channels = (4 * w, 4 * w, 4 * w, 2 * w)
        self.pretrained_note = "built-in small CNN, trained from scratch"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        f32 = self.s32(f16)
        return [f32, f16, f8, f4]


class UNetEncoder(nn.Module):
    """UNet-style encoder-decoder: the decoder's maps (with skips) are the multi-stride features."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc = nn.ModuleList([_block(3, w, 2), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2),
                                  _block(4 * w, 4 * w, 2), _block(4 * w, 8 * w, 2)])
        self.dec16 = _block(8 * w + 4 * w, 4 * w)
        self.dec8 = _block(4 * w + 4 * w, 4 * w)
        self.dec4 = _block(4 * w + 2 * w, 2 * w)
        self.channels = (8 * w, 4 * w, 4 * w, 2 * w)
        self.pretrained_note = "built-in UNet encoder, trained from scratch"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for m in self.enc:
            x = m(x)
            feats.append(x)
        _, e4, e8, e16, e32 = feats

        def up(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            return F.interpolate(a, size=ref.shape[-2:], mode="bilinear", align_corners=False)

        d16 = self.dec16(torch.cat([up(e32, e16), e16], 1))
        d8 = self.dec8(torch.cat([up(d16, e8), e8], 1))
        d4 = self.dec4(torch.cat([up(d8, e4), e4], 1))
        return [e32, d16, d8, d4]


class TimmBackbone(nn.Module):
    """Any timm model with `features_only=True`, out_indices chosen to give strides 4..32."""

    def __init__(self, name: str, weights: str | None = None) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as exc:  # timm is an optional extra
            raise LmkError(f"backbone 'timm:{name}' needs the optional package timm "
                           "(pip install timm), or pick the built-in 'small_cnn' / 'unet'") from exc
        probe = timm.create_model(name, features_only=True, pretrained=False)
        red = list(probe.feature_info.reduction())
        idx = []
        for s in (4, 8, 16, 32):
            if s not in red:
                raise LmkError(f"timm model {name} has no feature map at stride {s}")
            idx.append(red.index(s))
        self.model, self.pretrained_note = _timm_with_weights(timm, name, tuple(idx), weights)
        ch = self.model.feature_info.channels()
        self.channels = (ch[3], ch[2], ch[1], ch[0])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f4, f8, f16, f32 = self.model(x)
        return [f32, f16, f8, f4]


def _timm_with_weights(timm, name: str, idx: tuple[int, ...], weights: str | None):
    """Weights from a file path, else timm/HF cache with the hub forced offline, else scratch."""
    if weights:
        path = Path(weights).expanduser()
        if not path.exists():
            raise LmkError(f"{path}: backbone weights file not found")
        model = timm.create_model(name, features_only=True, pretrained=False, out_indices=idx)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, _ = model.load_state_dict(state, strict=False)
        return model, f"{name} with weights from {path} ({len(missing)} tensors not in the file)"
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        model = timm.create_model(name, features_only=True, pretrained=True, out_indices=idx)
        note = f"{name} with ImageNet weights from the local cache"
    except Exception:  # noqa: BLE001 - any failure to find cached weights means: from scratch
        model = timm.create_model(name, features_only=True, pretrained=False, out_indices=idx)
        note = f"{name}: no local ImageNet weights found, trained from scratch"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return model, note


def make_backbone(name: str, width: int = 16, weights: str | None = None) -> nn.Module:
    """'small_cnn', 'unet', or 'timm:<model>' (e.g. 'timm:hrnet_w18')."""
    if name == "small_cnn":
        return SmallCNN(width)
    if name == "unet":
        return UNetEncoder(width)
    if name.startswith("timm:"):
        return TimmBackbone(name[5:], weights)
    raise LmkError(f"unknown Stage I backbone {name!r}: use small_cnn, unet or timm:<model>")
