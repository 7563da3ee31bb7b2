"""Staged joint training (``JointTrainer``) with checkpoints that cannot go stale."""

from ur4rec.training.trainer import JointTrainer, NonFiniteTrainingError, TrainResult

__all__ = ["JointTrainer", "NonFiniteTrainingError", "TrainResult"]
