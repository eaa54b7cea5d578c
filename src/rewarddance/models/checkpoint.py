"""The checkpoint config: `rewarddance.json` beside the model's own files, as a typed dataclass.

Written by `write_checkpoint_config` and read by `read_checkpoint_config`, nowhere else. It
records what a reward model needs to score the way it was trained: the objective, the
layout (pointwise / pairwise), the task, the answer tokens, and how the weights are stored
(full, or a LoRA adapter over a base model).

Example:
    >>> from rewarddance.models.checkpoint import CheckpointConfig
    >>> CheckpointConfig(layout="pairwise", objective="generative-pairwise").format_version
    1
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "rewarddance.json"
FORMAT_VERSION = 1
OBJECTIVES = ("generative-pairwise", "generative-pointwise", "regressive-bt", "clip-bt")


class CheckpointError(ValueError):
    """A checkpoint directory this version cannot read; the message names the file and the problem."""


@dataclass
class CheckpointConfig:
    """What `rd.load` needs besides the backbone's own files."""

    format_version: int = FORMAT_VERSION
    objective: str = "generative-pointwise"  # how it was trained; decides which head scores
    layout: str = "pointwise"  # "pointwise" | "pairwise" (reference as image 1, candidate as image 2)
    task: str = "t2i-alignment"  # the default task of score/compare/rank
    normalize: str = "yes_no"  # "yes_no" | "vocab"
    num_frames: int = 4  # frames sampled from each video
    padding_side: str = "left"
    answer_ids: dict[str, list[int]] = field(default_factory=dict)  # {"yes": [...], "no": [...]}, informative
    adapter_of: str | None = None  # LoRA adapter checkpoints: the base model directory
    adapter_base_digest: str | None = None  # ...and `weights_file_digest` of that base when it was trained
    training: dict[str, Any] = field(default_factory=dict)  # free-form: steps, data, metrics of the run

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise CheckpointError(f"unknown objective {self.objective!r}; one of {', '.join(OBJECTIVES)}")
        if self.layout not in ("pointwise", "pairwise"):
            raise CheckpointError(f"layout must be 'pointwise' or 'pairwise', got {self.layout!r}")

    def replace(self, **changes: Any) -> "CheckpointConfig":
        """A copy with `changes`; an unknown name is an error naming it."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown checkpoint setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def read_checkpoint_config(path: str | os.PathLike) -> CheckpointConfig:
    """The config of checkpoint directory `path` (defaults when it has no rewarddance.json: a plain
    Hugging Face VLM directory is a pointwise generative judge)."""
    file = Path(path) / CONFIG_NAME
    if not file.exists():
        return CheckpointConfig()
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    version = data.get("format_version", 1)  # files written before versioning are version 1
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"{file}: checkpoint format version {version!r} is not supported by this "
                              f"rewarddance (reads versions 1..{FORMAT_VERSION}); upgrade rewarddance")
    names = {f.name for f in dataclasses.fields(CheckpointConfig)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"{file}: unknown key(s) {', '.join(sorted(unknown))}")
    return CheckpointConfig(**data)


def write_checkpoint_config(path: str | os.PathLike, config: CheckpointConfig) -> Path:
    """Write `config` as `path`/rewarddance.json."""
    file = Path(path) / CONFIG_NAME
    file.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return file


def weights_file_digest(path: str | os.PathLike, *, recursive: bool = False) -> str:
    """A hash of a model directory's weight files (*.safetensors, streamed; `recursive`: in its subfolders
    too, as a diffusers pipeline keeps them): an adapter records its base's, so that loading it onto a base
    whose weights have changed fails instead of scoring wrong."""
    h = hashlib.blake2b(digest_size=16)
    root = Path(path)
    files = sorted(root.rglob("*.safetensors") if recursive else root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weight files")
    for f in files:
        h.update(f.relative_to(root).as_posix().encode())
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()

