"""Presets small enough for a test (no tests here): the structure of the bundled ones, seconds
on phantoms of ~100 px."""

from __future__ import annotations

# Stage I from the classical preview with one learned crop-refinement step (the cpu preset's shape)
TINY_S1_CLASSICAL = {"name": "tiny", "start": "classical", "torch_threads": 1,
                     "refine": {"crop": 32, "scale": 2.0, "backbone": "small_cnn", "width": 4,
                                "d_model": 16, "heads": 2, "n_layers": 1, "global_type": "none",
                                "epochs": 1, "steps_per_epoch": 1, "batch": 2, "eval_every": 1,
                                "n_local_infer": 2}}
# Stage I with the learned whole-image pass (the quick / paper presets' shape)
TINY_S1_LEARNED = {"name": "tiny", "start": "learned", "torch_threads": 1,
                   "coarse": {"size": [48, 48], "backbone": "small_cnn", "width": 4,
                              "d_model": 16, "heads": 2, "n_layers": 1, "global_type": "none",
                              "epochs": 1, "steps_per_epoch": 1, "batch": 2, "lr": 0.001,
                              "sigma": 2.0, "eval_every": 1}}
# Stage II: two small U-Nets, two steps
TINY_S2 = {"detector": {"kind": "unet", "base": 4, "depth": 2}, "patch": 32, "scale": 1.0,
           "sigma": 1.5, "steps": 2, "steps_per_epoch": 1, "batch_trusted": 2,
           "batch_pseudo": 2, "calib_warps": 1, "tolerance_px": 6.0}
