"""Stage I geometry and losses: the paper's affine matrix, exact point transport through A and
the local flows, SSIM / edge-weighted smoothness behaviour."""

from __future__ import annotations

import math

import torch

from lmk_studio.engine.stage1 import affine_from_params
from lmk_studio.engine.stage1 import losses as L
from lmk_studio.engine.stage1.model import (
    compose_flow,
    grid_from_matrix,
    norm_to_px,
    points_through_flow,
    points_through_matrix,
    px_to_norm,
    sample_field,
)


def test_affine_parametrisation_is_the_papers_matrix() -> None:
    o = torch.tensor([[0.1, -0.2, 0.3, -0.1, 0.2, -0.15]])
    a = affine_from_params(o)[0]
    sx, sy, al, be = 1.3, 0.9, 0.2 * math.pi / 2, -0.15 * math.pi / 2
    want = torch.tensor([
        [sx * math.cos(al), sx * (math.cos(al) * math.tan(be) + math.sin(al)), 0.1],
        [-sy * math.sin(al), sy * (-math.sin(al) * math.tan(be) + math.cos(al)), -0.2]])
    assert torch.allclose(a, want, atol=1e-6)
    assert torch.allclose(affine_from_params(torch.zeros(1, 6))[0], torch.eye(2, 3))


def test_points_follow_the_composed_global_and_local_warps() -> None:
    """A source point carried through A and two flows lands where the warped image puts it."""
    torch.manual_seed(0)
    h, w = 64, 48
    mat = affine_from_params(torch.tensor([[0.05, -0.04, 0.08, -0.05, 0.06, 0.03]]))
    grid = grid_from_matrix(mat, h, w)
    pts_px = torch.tensor([[[10.0, 12.0], [30.5, 40.2], [24.0, 31.0]]])
    p = points_through_matrix(mat, px_to_norm(pts_px, h, w))
    for k in range(2):
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w),
                                indexing="ij")
        flow = 0.06 * torch.stack([torch.sin(2.0 * yy + k), torch.cos(1.5 * xx - k)], -1)[None]
        grid = compose_flow(grid, flow)
        p = points_through_flow(flow, p)
    # the warped image at p samples the source at grid(p): that must be the original point
    back = norm_to_px(sample_field(grid, p), h, w)
    assert (back - pts_px).norm(dim=-1).max() < 0.5

    # and an actual image: a blob at a source point appears at the carried point
    src = torch.zeros(1, 1, h, w)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    c = pts_px[0, 1]
    src[0, 0] = torch.exp(-((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / (2 * 2.0 ** 2))
    warped = torch.nn.functional.grid_sample(src, grid, align_corners=True)[0, 0]
    wsum = warped.sum()
    centroid = torch.stack([(warped * xs).sum() / wsum, (warped * ys).sum() / wsum])
    assert (centroid - norm_to_px(p, h, w)[0, 1]).norm() < 0.5


def test_ssim_loss_is_zero_for_identical_images() -> None:
    img = torch.rand(2, 1, 32, 32)
    assert float(L.ssim_loss(img, img)) < 1e-5
    mask = L.landmark_mask(torch.tensor([[[10.0, 12.0]], [[20.0, 5.0]]]), 32, 32, 3.0)
    assert float(L.esim_loss(img, img, mask)) < 1e-5
    assert float(L.ssim_loss(img, torch.rand(2, 1, 32, 32))) > 0.5


def test_edge_weighting_lowers_smoothness_weight_on_edges() -> None:
    img = torch.zeros(1, 1, 32, 32)
    img[..., 16:] = 1.0                      # a vertical edge at x = 16
    wgt = L.smooth_weights(img, 0.1)[0, 0]
    assert float(wgt[10, 16]) < 0.1 * float(wgt[10, 4])
    # a flow jump across the edge costs less with edge weighting than without
    flow = torch.zeros(1, 32, 32, 2)
    flow[:, :, 16:, 0] = 0.1
    assert float(L.esmooth_loss(flow, img, 0.1, True)) < float(
        L.esmooth_loss(flow, img, 0.1, False))


def test_schedules_follow_the_paper_shape() -> None:
    assert L.local_weight(0.0) < 0.01 and L.local_weight(0.5) == 1.0
    assert L.syn_weight(0.0) == 5.0 and L.syn_weight(0.5) == 0.0
    assert L.lr_factor(0.2) == 1.0 and abs(L.lr_factor(1.0) - 0.5) < 1e-9
