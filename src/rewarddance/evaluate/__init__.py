"""Measuring reward models: manifest scoring (resumable, row errors kept)."""

from .scoring import score_manifest

__all__ = ["score_manifest"]
