"""Backbones and reward heads: the generative (yes-token) reward model and offline presets."""

from .presets import ARCHS, SIZES, build_preset, parse_preset_name, preset_path
from .reward_model import RewardModel, resolve_answer_ids

__all__ = ["ARCHS", "SIZES", "RewardModel", "build_preset", "parse_preset_name", "preset_path", "resolve_answer_ids"]
