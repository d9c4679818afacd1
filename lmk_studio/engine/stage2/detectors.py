"""Heatmap detectors f and g: a light torch-only U-Net for CPU presets, HRNet-W18 (timm) for GPU.

Both map a grey (B,1,H,W) image in [0,1] to (B,K,H/stride,W/stride) heatmaps, one channel per
landmark. The detector's `stride` attribute is what views.heatmap_matrix needs for T_{e->h}.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(4, cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(min(4, cout), cout),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """Small U-Net with full-resolution output (stride 1): cheap on 2 CPU cores.

    GroupNorm, not BatchNorm: batches mix patches of different landmarks and images, and train /
    eval behaviour must match for the self-consistency ranking to mean the same thing.
    """

    def __init__(self, n_out: int, base: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.stride = 1
        chans = [base * (2 ** i) for i in range(depth + 1)]
        self.inc = _block(1, chans[0])
        self.downs = nn.ModuleList(_block(chans[i], chans[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(
            _block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], n_out, 1)
        # start from an all-zero heatmap: a random head makes the first hundred steps unlearn
        # large spurious maps (loss 40x the "predict nothing" level) before learning any peak
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25
        skips = [self.inc(x)]
        h = skips[0]
        for down in self.downs:
            h = down(F.max_pool2d(h, 2))
            skips.append(h)
        skips.pop()
        for up in self.ups:
            s = skips.pop()
            h = F.interpolate(h, size=s.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat([h, s], dim=1))
        return self.head(h)


class HRNetHeatmap(nn.Module):
    """HRNet-W18 (timm, imported lazily) with the HRNetV2 head: all branches upsampled to 1/4,
    concatenated, 1x1 conv + BN + ReLU + 1x1 conv to K heatmaps (stride 4), as in the paper."""

    def __init__(self, n_out: int, pretrained: bool = False, name: str = "hrnet_w18") -> None:
        super().__init__()
        try:
            import timm
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the 'paper' Stage II preset needs timm (pip install 'lmk_studio[timm]')") from exc
        self.stride = 4
        try:
            self.backbone = timm.create_model(name, pretrained=pretrained, features_only=True,
                                              out_indices=(1, 2, 3, 4))
        except Exception as exc:  # weights download / cache problems
            raise RuntimeError(
                f"cannot build {name} (pretrained={pretrained}): {exc}. Pretrained weights are "
                "fetched by timm from the Hugging Face hub once; offline, pre-fill the timm "
                "cache or set \"pretrained\": false in the preset") from exc
        chans = sum(self.backbone.feature_info.channels())
        self.head = nn.Sequential(nn.Conv2d(chans, chans, 1), nn.BatchNorm2d(chans),
                                  nn.ReLU(inplace=True), nn.Conv2d(chans, n_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
        x3 = (x.expand(-1, 3, -1, -1) - mean) / std
        feats = self.backbone(x3)
        size = feats[0].shape[-2:]
        up = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                           for f in feats[1:]]
        hm = self.head(torch.cat(up, dim=1))
        # timm's HRNet features start at stride 4; make the size exact for odd inputs
        target = (x.shape[-2] // 4, x.shape[-1] // 4)
        if hm.shape[-2:] != target:
            hm = F.interpolate(hm, size=target, mode="bilinear", align_corners=False)
        return hm


def build_detector(kind: str, n_out: int, **kw) -> nn.Module:
    """`kind`: "unet" (CPU presets) or "hrnet" (paper preset)."""
    if kind == "unet":
        return TinyUNet(n_out, base=int(kw.get("base", 16)), depth=int(kw.get("depth", 3)))
    if kind == "hrnet":
        return HRNetHeatmap(n_out, pretrained=bool(kw.get("pretrained", False)),
                            name=str(kw.get("name", "hrnet_w18")))
    raise ValueError(f"unknown Stage II detector {kind!r}: use 'unet' or 'hrnet'")
