"""Measuring reward models: manifest scoring (resumable, row errors kept)."""

from .scoring import pairwise_accuracy, score_manifest, score_records

__all__ = ["pairwise_accuracy", "score_manifest", "score_records"]
