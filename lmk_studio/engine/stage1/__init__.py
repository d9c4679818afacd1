"""Stage I: the learned edge-guided registration (EGT) that carries the exemplar's landmarks to
every image of the folder. Engine code: no Qt."""

from .config import PassConfig, Stage1Config, load_preset
from .job import predict_stage1_job, train_stage1_job
from .model import EGTNet, affine_from_params
from .pipeline import Stage1Result, fit_stage1, predict_with_models

__all__ = ["EGTNet", "PassConfig", "Stage1Config", "Stage1Result", "affine_from_params",
           "fit_stage1", "load_preset", "predict_stage1_job", "predict_with_models",
           "train_stage1_job"]
