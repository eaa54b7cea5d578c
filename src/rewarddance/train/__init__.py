"""Training components: objectives (pure functions), the training forward, checkpoints and logs."""

from .objectives import OBJECTIVES, Scores

__all__ = ["OBJECTIVES", "Scores"]
