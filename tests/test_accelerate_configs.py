"""The accelerate config files for GPU users (recipes/configs/accelerate/*.yaml) are valid.

No GPU is needed and nothing is launched: each file goes through accelerate's own config
machinery, the path `accelerate launch --config_file FILE` takes.

1. `ClusterConfig.from_yaml_file` (what `load_config_from_file` uses) rejects unknown top-level
   keys and gives the `DistributedType`.
2. It does NOT check the keys nested under `fsdp_config` / `deepspeed_config`: `accelerate
   launch` (commands/launch.py, `_validate_launch_command`) copies each of them onto its argparse
   namespace, `fsdp_config.x` as `args.fsdp_x` unless x already starts with "fsdp", the
   deepspeed ones under their own name, with `setattr`, so a misspelt key is silently ignored.
   We assert each one is a `accelerate launch` option after that same renaming.
   (FullyShardedDataParallelPlugin's dataclass fields are not the key names: `fsdp_offload_params`
   reaches the plugin as `cpu_offload`, `fsdp_transformer_layer_cls_to_wrap` as
   `transformer_cls_names_to_wrap`, through FSDP_* environment variables, so we go that way.)
3. For FSDP, the environment `accelerate launch` would give the processes (utils/launch.py,
   `prepare_multi_gpu_env`) builds a FullyShardedDataParallelPlugin with the intended settings.
   For DeepSpeed, the zero stage reaches `prepare_deepspeed_cmd_env`'s environment (DeepSpeed
   itself is not installed here, so DeepSpeedPlugin is not built).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import rewarddance

accelerate = pytest.importorskip("accelerate")
from accelerate.commands.config.config_args import ClusterConfig  # noqa: E402
from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: E402
from accelerate.utils import ComputeEnvironment, DistributedType  # noqa: E402

CONFIG_DIR = Path(rewarddance.__file__).parent / "recipes" / "configs" / "accelerate"
REPO_REL = "src/rewarddance/recipes/configs/accelerate"

EXPECTED = {
    "ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
}
ZERO_STAGE = {"deepspeed_zero2.yaml": 2, "deepspeed_zero3.yaml": 3}


def _launch(name: str):
    """(args, defaults) as `accelerate launch --config_file FILE -m rewarddance.cli train` has them."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIG_DIR / name), "-m", "rewarddance.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def _launch_option_names() -> set[str]:
    return {action.dest for action in launch_command_parser()._actions}


def test_all_config_files_are_covered():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cluster_config_accepts_file(name):
    cfg = ClusterConfig.from_yaml_file(str(CONFIG_DIR / name))  # raises on unknown top-level keys
    assert cfg.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert cfg.distributed_type == EXPECTED[name]
    assert cfg.mixed_precision == "bf16"
    assert cfg.num_processes >= 2 and cfg.num_machines == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_gives_launch_command(name):
    lines = (CONFIG_DIR / name).read_text().splitlines()
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert lines[0].startswith("#")
    assert f"accelerate launch --config_file {REPO_REL}/{name} -m rewarddance.cli train" in header
    assert "num_processes to the number of GPUs" in header


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nested_keys_are_accelerate_launch_options(name):
    cfg = ClusterConfig.from_yaml_file(str(CONFIG_DIR / name))
    options = _launch_option_names()
    nested = {"fsdp_config": cfg.fsdp_config, "deepspeed_config": cfg.deepspeed_config}
    if cfg.distributed_type == DistributedType.FSDP:
        assert cfg.fsdp_config, "FSDP config without fsdp_config"
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        assert cfg.deepspeed_config, "DeepSpeed config without deepspeed_config"
    else:
        assert not cfg.deepspeed_config
    if cfg.distributed_type != DistributedType.FSDP:
        assert not cfg.fsdp_config
    for section, keys in nested.items():
        for key in keys:
            # the renaming of commands/launch.py `_validate_launch_command`
            option = "fsdp_" + key if section == "fsdp_config" and not key.startswith("fsdp") else key
            assert option in options, f"{name}: {section}.{key} is not an `accelerate launch` option"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_sees_the_distributed_type(name):
    args, _ = _launch(name)
    kind = EXPECTED[name]
    assert args.multi_gpu == (kind == DistributedType.MULTI_GPU)
    assert args.use_fsdp == (kind == DistributedType.FSDP)
    assert args.use_deepspeed == (kind == DistributedType.DEEPSPEED)
    assert args.mixed_precision == "bf16"


def test_fsdp_plugin_gets_full_shard_transformer_wrap(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    args, defaults = _launch("fsdp.yaml")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables, as in each process

    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2's full shard
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    wrap = defaults.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert plugin.transformer_cls_names_to_wrap == wrap
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"

    # the layer classes named exist in the installed transformers (read, not imported: fast)
    spec = importlib.util.find_spec("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")
    source = Path(spec.origin).read_text()
    for cls_name in wrap:
        assert f"class {cls_name}(" in source, cls_name


@pytest.mark.parametrize("name", sorted(ZERO_STAGE))
def test_deepspeed_zero_stage(name):
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    stage = ZERO_STAGE[name]
    assert ClusterConfig.from_yaml_file(str(CONFIG_DIR / name)).deepspeed_config["zero_stage"] == stage
    args, defaults = _launch(name)
    assert args.zero_stage == stage
    # set by commands/launch.py `launch_command` before the DeepSpeed launcher
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
