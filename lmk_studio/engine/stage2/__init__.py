"""Stage II (C2T): two heatmap detectors co-trained on the exemplar + noisy Stage-I pseudo-labels.

Public API: train_stage2_job / predict_stage2_job (project store), fit_stage2 (arrays),
Stage2Config / load_preset, Stage2Model. Qt-free.
"""

from .config import Stage2Config, load_preset
from .job import predict_stage2_job, train_stage2_job
from .model import Stage2Model
from .pipeline import Stage2Result, fit_stage2
from .trainer import Stage2Data, Stage2Trainer

__all__ = [
    "Stage2Config", "Stage2Data", "Stage2Model", "Stage2Result", "Stage2Trainer", "fit_stage2",
    "load_preset", "predict_stage2_job", "train_stage2_job",
]
