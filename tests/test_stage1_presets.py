"""Stage I presets load, and every backbone gives the four strides the fusion expects."""

from __future__ import annotations

import pytest
import torch

from lmk_studio.core.errors import LmkError
from lmk_studio.engine.stage1 import EGTNet, load_preset
from lmk_studio.engine.stage1.backbones import make_backbone


def test_bundled_presets_load() -> None:
    for name in ("quick", "cpu", "paper"):
        cfg = load_preset(name)
        assert cfg.name == name
    assert load_preset("paper").coarse.epochs == 750
    with pytest.raises(LmkError, match="not found"):
        load_preset("no-such-preset")


# timm backbones are exercised by the paper preset; creating one here costs ~50 s on the shared
# 2-core box (offline weight probe + import), too slow for the suite.
@pytest.mark.parametrize("name", ["small_cnn", "unet"])
def test_backbones_give_strides_32_to_4(name: str) -> None:
    bb = make_backbone(name, width=4)
    feats = bb(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [2, 4, 8, 16]
    assert [f.shape[1] for f in feats] == list(bb.channels)
    assert bb.pretrained_note


def test_network_starts_at_identity_and_perspective_option_runs() -> None:
    net = EGTNet("small_cnn", width=4, d_model=16, n_layers=1, global_type="perspective")
    net.eval()
    src = torch.rand(1, 1, 64, 64)
    out = net(src, src, n_local=2, pts=torch.zeros(1, 2, 2))
    assert out["matrix"].shape == (1, 3, 3)
    assert torch.allclose(out["warped"][-1], src, atol=1e-3)
