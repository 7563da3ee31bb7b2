"""Staged joint training (``JointTrainer``), resumable exactly, with checkpoints that cannot go stale.

A whole run (workspace, training, final-model selection, ``final.pt``) is ``ur4rec.pipeline.train``.
"""

from ur4rec.training.trainer import JointTrainer, NonFiniteTrainingError, StageResult, TrainResult

__all__ = ["JointTrainer", "NonFiniteTrainingError", "StageResult", "TrainResult"]
