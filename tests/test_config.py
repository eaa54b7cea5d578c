"""The run-config mechanism and the typed checkpoint config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from rewarddance.config import ConfigError, load_config, save_config
from rewarddance.models.checkpoint import (CONFIG_NAME, FORMAT_VERSION, CheckpointConfig, CheckpointError,
                                           read_checkpoint_config, write_checkpoint_config)


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Run:
    model: str = "m"
    steps: int = 10
    lora: bool = False
    eval_data: str | None = None
    optim: Optim = field(default_factory=Optim)
    extra: list[Optim] = field(default_factory=list)  # a list of sections (GRPO's extra_rewards)


def test_defaults_yaml_then_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("steps: 30\noptim:\n  lr: 0.01\n")
    cfg = load_config(Run, tmp_path / "run.yaml", ["optim.lr=3e-4", "lora=true", "eval_data=x.jsonl",
                                                   "optim.betas=[0.8, 0.9]", "model=7"])
    assert cfg == Run(model="7", steps=30, lora=True, eval_data="x.jsonl", optim=Optim(3e-4, [0.8, 0.9]))
    assert load_config(Run, overrides=["optim.lr=1"]).optim.lr == 1.0  # int -> float is lossless
    cfg.extra = load_config(Run, overrides=["extra=[{lr: 0.5}, {}]"]).extra
    assert cfg.extra == [Optim(lr=0.5), Optim()]
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Run, tmp_path / "out" / "config.yaml") == cfg


def test_every_shipped_recipe_config_loads():
    from pathlib import Path

    import rewarddance
    from rewarddance.recipes.grpo import GRPOConfig
    from rewarddance.recipes.pretrain_generator import GeneratorPretrainConfig
    from rewarddance.recipes.refl import ReFLConfig

    schemas = {"grpo": GRPOConfig, "grpo-sd3": GRPOConfig, "refl": ReFLConfig, "pretrain_generator":
               GeneratorPretrainConfig}
    files = sorted((Path(rewarddance.__file__).parent / "recipes" / "configs").glob("*.yaml"))
    assert {f.stem for f in files} == set(schemas)
    for f in files:
        load_config(schemas[f.stem], f)


@pytest.mark.parametrize("override, message", [
    ("stepz=3", "unknown key 'stepz'"), ("optim.lr2=3", "unknown key 'optim.lr2'"),
    ("steps=ten", "steps: 'ten' is not a int"), ("lora=maybe", "lora: 'maybe' is not a bool"),
    ("steps=1.5", "steps"), ("optim.betas=3", "optim.betas: expected a list"), ("steps", "key=value"),
    ("extra=[{lr2: 1}]", "unknown key 'extra[0].lr2'"), ("extra=[3]", "extra[0]: expected a mapping"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(Run, overrides=[override])


def test_checkpoint_config_round_trip_and_versions(tmp_path):
    cfg = CheckpointConfig(objective="generative-pairwise", layout="pairwise", task="t2i-overall")
    write_checkpoint_config(tmp_path, cfg)
    assert read_checkpoint_config(tmp_path) == cfg
    assert read_checkpoint_config(tmp_path / "nothing") == CheckpointConfig()
    # files from before versioning (session 1's init-model) read as version 1
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"layout": "pairwise", "task": "t2i-alignment"}))
    assert read_checkpoint_config(tmp_path).layout == "pairwise"
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="format version 2 is not supported"):
        read_checkpoint_config(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"layout": "pairwise", "colour": "red"}))
    with pytest.raises(CheckpointError, match="unknown key.*colour"):
        read_checkpoint_config(tmp_path)
    with pytest.raises(CheckpointError, match="unknown objective"):
        CheckpointConfig(objective="magic")
