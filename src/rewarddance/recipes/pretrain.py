"""Recipe: a pretrained starting point `<arch>-<size>-shapeworld` (captions and content questions).

    rewarddance pretrain --arch qwen2_5_vl --size small [key=value ...]

Real reward models start from a pretrained VLM; none can be downloaded here, so this is the
project's own pretraining stage: the training recipe with the next-token objective on
ShapeWorld captions and content questions over every colour x shape combination
(world.dataset.build_pretrain). It builds the randomly initialised preset, the data, trains,
measures exact-match answer accuracy on held-out questions, and writes the preset (float16
safetensors) with `pretrain_report.json` into the user's preset cache, or `out`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import ConfigError, save_config
from ..data import RecordError
from ..data.training import make_pretrain_example, read_pretrain
from ..models.checkpoint import CheckpointConfig, write_checkpoint_config
from ..models.judge import Judge
from ..models.presets import PRETRAINED_SUFFIX, build_preset, cache_dir, parse_preset_name, preset_path
from ..train.engine import MetricsLog, atomic_dir
from ..train.forward import target_exact_match
from .train_rm import TrainConfig, train


# 1e-3 suits tiny (2 layers); at 1e-3 the small preset's language model stopped reading the image by step
# 500 (its vision gradient fell to 1e-4 of the total, the loss stuck at 0.55), while 3e-4 kept it reading
# (docs/training.md, "Pretraining the small preset")
DEFAULT_LR = {"tiny": 1e-3}
DEFAULT_LR_LARGER = 3e-4


@dataclass
class PretrainConfig:
    """Settings of `rewarddance pretrain` (key=value overrides)."""

    arch: str = "qwen2_5_vl"
    size: str = "tiny"
    out: str | None = None  # default: the preset cache, <cache>/presets/<arch>-<size>-shapeworld
    work_dir: str | None = None  # data and training run (default: <out>.work, kept for resume)
    init_from: str | None = None  # continue from this model (a directory or preset name) instead of random weights
    n_train: int = 8000  # pretraining scenes (each: a caption and ~6 questions)
    n_test: int = 300  # held-out scenes for the answer accuracy
    max_steps: int = 3000
    max_minutes: float | None = None
    batch_size: int = 16  # scenes per update (~7 sequences each)
    lr: float | None = None  # None: DEFAULT_LR by size
    warmup_steps: int = 100
    seed: int = 0
    save_steps: int = 250
    log_steps: int = 25
    progress: bool = True


def answer_accuracy(judge: Judge, test_file: Path, batch_size: int = 32) -> dict[str, float]:
    """Exact-match accuracy of greedy answers to held-out questions (captions excluded), per question kind."""
    rows = [r for r in read_pretrain(test_file) if not isinstance(r, RecordError)]
    seqs, kinds, orders = [], [], []
    for r in rows:
        ex = make_pretrain_example(r)
        for j, ((q, _), s) in enumerate(zip(r.pairs, ex.sequences)):
            if j == 0:  # the caption
                continue
            seqs.append(s)
            kinds.append(q.split()[0].lower() + (" there" if q.startswith("Is there") else ""))
            orders.append("question_first" if j % 2 == 1 else "image_first")  # make_pretrain_example alternates
    judge.eval()
    ok: list[bool] = []
    for i in range(0, len(seqs), batch_size):
        ok += target_exact_match(judge, seqs[i:i + batch_size])
    out = {"answer_accuracy": sum(ok) / len(ok), "n_questions": len(ok)}
    for kind in sorted(set(kinds)):
        hits = [o for o, k in zip(ok, kinds) if k == kind]
        out[f"accuracy_{kind.replace(' ', '_')}"] = sum(hits) / len(hits)
    for order in sorted(set(orders)):
        hits = [o for o, k in zip(ok, orders) if k == order]
        out[f"accuracy_{order}"] = sum(hits) / len(hits)
    return out


def with_default_lr(cfg: PretrainConfig) -> PretrainConfig:
    """`cfg` with its learning rate set by size when it has none (DEFAULT_LR).

        >>> with_default_lr(PretrainConfig(size="small")).lr
        0.0003
    """
    return cfg if cfg.lr is not None else replace(cfg, lr=DEFAULT_LR.get(cfg.size, DEFAULT_LR_LARGER))


def pretrain(cfg: PretrainConfig) -> Path:
    """Run the recipe; returns the preset directory."""
    from ..world.dataset import build_pretrain

    cfg = with_default_lr(cfg)  # resolved first, so that pretrain.yaml and the report's command state it
    name = f"{cfg.arch}-{cfg.size}{PRETRAINED_SUFFIX}"
    out = Path(cfg.out) if cfg.out else cache_dir() / name
    work = Path(cfg.work_dir) if cfg.work_dir else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    save_config(cfg, work / "pretrain.yaml")
    t0 = time.perf_counter()
    init = work / "init"
    if cfg.init_from:
        init = Path(cfg.init_from)
        if not init.exists() and parse_preset_name(cfg.init_from) is not None:
            init = preset_path(cfg.init_from)
    elif not (init / "config.json").exists():
        atomic_dir(init, lambda p: build_preset(cfg.arch, cfg.size, p, seed=cfg.seed))
    data = work / "data"
    if not (data / "pretrain-test.jsonl").exists():
        build_pretrain(data, cfg.n_train, seed=cfg.seed, n_test=cfg.n_test, progress=cfg.progress)
    final = train(TrainConfig(model=str(init), data=str(data / "pretrain-train.jsonl"), objective="next-token",
                              output_dir=str(work / "run"), max_steps=cfg.max_steps, max_minutes=cfg.max_minutes,
                              batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                              save_steps=cfg.save_steps, log_steps=cfg.log_steps, progress=cfg.progress,
                              tensorboard=False))
    judge = Judge.from_pretrained(final)
    report = answer_accuracy(judge, data / "pretrain-test.jsonl")
    minutes = (time.perf_counter() - t0) / 60
    metrics = MetricsLog.read(work / "run")
    report |= {"preset": name, "train_minutes": round(metrics[-1]["minutes"], 2), "total_minutes": round(minutes, 2),
               "steps": metrics[-1]["step"], "final_loss": round(metrics[-1]["loss"], 4),
               "parameters": sum(p.numel() for p in judge.parameters()),
               "command": "rewarddance pretrain " + " ".join(f"{k}={v}" for k, v in vars(cfg).items()
                                                               if v is not None and k not in ("out", "work_dir"))}

    def write(p: Path) -> None:
        judge.backbone.to(torch.float16).save_pretrained(p)  # half the bytes; loads back as float32
        judge.processor.save_pretrained(p)
        write_checkpoint_config(p, CheckpointConfig(training={"pretrain": report}))
        (p / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
        shutil.copy(work / "run" / "metrics.jsonl", p / "pretrain_metrics.jsonl")

    atomic_dir(out, write)
    print(f"{name}: answer accuracy {report['answer_accuracy']:.1%} on {report['n_questions']} held-out "
          f"questions, {report['train_minutes']:.1f} min of training -> {out}", file=sys.stderr)
    if report["answer_accuracy"] < 0.9:
        print(f"warning: {name} answers {report['answer_accuracy']:.1%} of held-out questions (target 90%); "
              "train longer (max_steps=...)", file=sys.stderr)
    return out


def check_arch_size(cfg: PretrainConfig) -> None:
    from ..models.presets import ARCHS, SIZES

    if cfg.arch not in ARCHS:
        raise ConfigError(f"arch: {cfg.arch!r} is not one of {', '.join(ARCHS)}")
    if cfg.size not in SIZES:
        raise ConfigError(f"size: {cfg.size!r} is not one of {', '.join(SIZES)}")
