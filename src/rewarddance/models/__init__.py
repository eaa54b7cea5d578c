"""Backbones and reward heads: the judge (differentiable core), the RewardModel facade, checkpoints,
offline presets."""

from .checkpoint import CheckpointConfig, read_checkpoint_config, write_checkpoint_config
from .judge import Judge, resolve_answer_ids
from .presets import ARCHS, SIZES, build_preset, parse_preset_name, preset_path
from .reward_model import RewardModel

__all__ = ["ARCHS", "SIZES", "CheckpointConfig", "Judge", "RewardModel", "build_preset", "parse_preset_name",
           "preset_path", "read_checkpoint_config", "resolve_answer_ids", "write_checkpoint_config"]
