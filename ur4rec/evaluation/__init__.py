"""Evaluation: one ranking-metric implementation, full ranking first."""

from ur4rec.evaluation.metrics import (
    NonFiniteScoresError,
    full_ranking_metrics,
    metrics_from_ranks,
    summarise,
    target_ranks,
)

__all__ = ["NonFiniteScoresError", "full_ranking_metrics", "metrics_from_ranks", "summarise", "target_ranks"]
