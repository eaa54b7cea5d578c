"""Recipe: train a reward model (generative pairwise / pointwise, regressive-bt, clip-bt; next-token pretraining).

    rewarddance train data=data/world/train.jsonl eval_data=data/world/test.jsonl max_minutes=15
    rewarddance train --config configs/train_rm.yaml lora=true output_dir=runs/lora
    torchrun --standalone --nproc_per_node 2 -m rewarddance.cli train data=...      # data-parallel

Setup (config, accelerator, data, judge, optimizer, resume), the train loop (global batch of
`batch_size` records split over ranks and `grad_accum` micro-batches), and save (atomic
`checkpoints/step-N` every `save_steps`, `best` by held-out accuracy, `final`). Killed and
restarted with the same command, a run resumes from its last checkpoint and repeats the
uninterrupted run's per-step losses. The components it wires live in rewarddance.train,
rewarddance.data.training and rewarddance.models.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import ConfigError, save_config
from ..data import RecordError
from ..data.training import (NEXT_TOKEN, Batch, ExampleError, make_example, make_pretrain_example,
                             read_examples_source)
from ..media import MediaError
from ..models.checkpoint import CheckpointConfig, read_checkpoint_config, weights_file_digest, write_checkpoint_config
from ..models.clip import ClipJudge
from ..models.judge import Judge, enable_layer_checkpointing, is_vision_parameter
from ..models.reward_model import RewardModel
from ..train.engine import Checkpointer, MetricsLog, atomic_dir, rng_state, set_rng_state, step_records
from ..train.forward import sequence_scores
from ..train.objectives import OBJECTIVES, term_counts

DEFAULT_MODEL = "qwen2_5_vl-tiny-shapeworld"  # the committed pretrained preset (tiny: the fastest to train here)
LORA_TARGETS = {"default": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@dataclass
class TrainConfig:
    """Settings of `rewarddance train` (YAML keys; override any with key=value)."""

    model: str = DEFAULT_MODEL  # checkpoint directory or preset name (a committed pretrained preset by default)
    data: str | None = None  # training manifest (JSONL); required
    eval_data: str | None = None  # held-out pairs: accuracy every eval_steps, best checkpoint kept as best/
    objective: Literal["generative-pairwise", "generative-pointwise", "regressive-bt", "clip-bt",
                       "next-token"] = "generative-pairwise"
    task: str = "t2i-overall"  # task of rows that name none
    output_dir: str = "runs/train"
    max_steps: int = 1000  # optimizer updates
    max_minutes: float | None = None  # stop cleanly (and save final/) after this much training time
    batch_size: int = 16  # records per optimizer update, over all ranks and micro-batches
    grad_accum: int = 1  # micro-batches per update on each rank
    lr: float = 1e-3  # the tiny preset's pretraining rate; 2e-4 and 1e-3 judged alike so far (docs/training.md)
    weight_decay: float = 0.01
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    seed: int = 0
    ties: Literal["drop", "soft"] = "drop"  # tied pairs: left out, or soft 0.5 targets
    cot: bool = True  # train on records' rationales (after the judgment token) when they have one
    cot_weight: float = 0.5  # weight of the rationale's next-token loss
    cot_order: Literal["judgment-first", "rationale-first"] = "judgment-first"
    ce_weight: float = 0.1  # generative-pointwise: weight of the yes/no cross-entropy beside Bradley-Terry
    num_frames: int = 4  # frames sampled from each video
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: dict[str, list[str]] = field(default_factory=lambda: dict(LORA_TARGETS))  # per family, or default
    lora_save: Literal["merged", "adapter"] = "merged"  # what final/ and best/ hold
    freeze_vision: bool = False  # the vision encoder and its projector into the LM (is_vision_parameter) stay as loaded
    gradient_checkpointing: bool = False
    bf16: bool = False  # bf16 autocast (where the device supports it)
    clip_size: str = "small"  # clip-bt from scratch: the size of the CLIP built when `model` is no CLIP checkpoint
    save_steps: int = 200  # checkpoint every N updates (and at the end)
    keep_checkpoints: int = 2  # at least 1
    log_steps: int = 10  # a metrics.jsonl row every N updates
    eval_steps: int = 100
    eval_max: int = 400  # held-out records evaluated each time
    eval_batch_size: int = 32
    strict: bool = False  # stop at the first bad data row instead of skipping it
    tensorboard: bool = True
    progress: bool = True


# ------------------------------------------------------------------ setup
def _accelerator():
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Accelerator() under torchrun on a machine without CUDA lets every rank train alone, silently
    # (field notes): ask for the CPU explicitly there, and gloo comes with it.
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _say(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, file=sys.stderr, flush=True)


def report_skipped(bad: list[str], used: int, what: str = "row(s)") -> None:
    """The first 20 bad rows' one-line errors, then how many were skipped and how many used."""
    for message in bad[:20]:
        print(f"skipped: {message}", file=sys.stderr)
    if len(bad) > 20:
        print(f"skipped: ... and {len(bad) - 20} more bad {what}", file=sys.stderr)
    if bad:
        print(f"{len(bad)} bad {what} skipped, {used} used", file=sys.stderr)


def load_training_records(cfg: TrainConfig, accelerator=None) -> list[Any]:
    """Every usable row of `cfg.data`; bad rows (malformed JSON, missing/corrupt media, unknown labels,
    rows the objective cannot use) are reported with their line numbers and skipped, or stop the
    run with `strict`. Each row's media is loaded once here, so training never meets a bad file."""
    if not cfg.data:
        raise ConfigError("data: a training manifest is required (data=path/to/train.jsonl)")
    path = Path(cfg.data)
    if not path.exists():
        raise ConfigError(f"data: {path} not found")
    good, bad = [], []
    for rec in read_examples_source(path, cfg.objective):
        try:
            if isinstance(rec, RecordError):
                raise rec
            _example(cfg, rec)
            good.append(rec)
        except (MediaError, RecordError, ExampleError) as e:  # one bad row: reported and skipped
            message = str(e) if str(e).startswith(str(path)) else f"{path}:{rec.line}: {e}"
            if cfg.strict:
                raise ConfigError(f"{message} (strict=true stops at the first bad row)") from None
            bad.append(message)
    if accelerator is None or accelerator.is_main_process:
        report_skipped(bad, len(good))
    if not good:
        raise ConfigError(f"data: {path} has no usable rows for objective {cfg.objective}")
    return good


def _example(cfg: TrainConfig, rec: Any):
    if cfg.objective == NEXT_TOKEN:
        return make_pretrain_example(rec)
    return make_example(rec, cfg.objective, task=cfg.task, cot=cfg.cot, cot_order=cfg.cot_order,
                        num_frames=cfg.num_frames)


def resolve_model(spec: str, num_processes: int = 1) -> Path:
    """A checkpoint directory, or a preset name (built or fetched from the package on first use)."""
    from ..models.presets import PresetNotBuiltError, parse_preset_name, preset_path

    path = Path(spec)
    if path.exists():
        return path
    if parse_preset_name(spec) is not None:
        try:
            return preset_path(spec)
        except PresetNotBuiltError as e:  # a pretrained preset neither shipped nor cached: pretrain it now
            if num_processes > 1:  # not inside a data-parallel launch: every rank would build it at once
                raise ConfigError(f"model: {e}") from None
            from .pretrain import PretrainConfig, pretrain

            arch, size = parse_preset_name(spec)
            print(f"{spec} is not cached: pretraining it first (rewarddance pretrain --arch {arch} "
                  f"--size {size})", file=sys.stderr)
            return pretrain(PretrainConfig(arch=arch, size=size))
    raise ConfigError(f"model: {spec!r} is neither a directory nor a preset name")


def build_judge(cfg: TrainConfig, num_processes: int = 1) -> tuple[torch.nn.Module, CheckpointConfig]:
    """The judge to train and the checkpoint config its saves will carry."""
    layout = "pairwise" if cfg.objective == "generative-pairwise" else "pointwise"
    ckpt = CheckpointConfig(objective=cfg.objective if cfg.objective != NEXT_TOKEN else "generative-pointwise",
                            layout=layout, task=cfg.task, num_frames=cfg.num_frames)
    if cfg.objective == "clip-bt":
        path = Path(cfg.model)
        if path.exists() and read_checkpoint_config(path).objective == "clip-bt":
            return ClipJudge.from_pretrained(path), ckpt
        return ClipJudge.from_config(cfg.clip_size, seed=cfg.seed), ckpt
    path = resolve_model(cfg.model, num_processes)
    base = read_checkpoint_config(path)
    if base.objective == "clip-bt":
        raise ConfigError(f"model: {cfg.model} is a CLIP checkpoint; objective {cfg.objective} needs a VLM")
    if base.adapter_of:
        raise ConfigError(f"model: {cfg.model} is a LoRA adapter; train from its merged checkpoint")
    torch.manual_seed(cfg.seed)  # the value head's initial weights
    keep_head = cfg.objective == "regressive-bt" and base.objective == "regressive-bt"  # continue training it
    judge = Judge.from_pretrained(path, padding_side=base.padding_side, value_head=keep_head)
    ckpt = ckpt.replace(padding_side=base.padding_side)
    if cfg.objective == "regressive-bt" and not keep_head:
        judge.value_head = torch.nn.Linear(judge.backbone.get_output_embeddings().weight.shape[1], 1)
        torch.nn.init.zeros_(judge.value_head.bias)
    if cfg.freeze_vision:
        for name, p in judge.backbone.named_parameters():
            if is_vision_parameter(name):
                p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        enable_layer_checkpointing(judge.backbone)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        family = judge.backbone.config.model_type
        targets = cfg.lora_targets.get(family) or cfg.lora_targets.get("default")
        if not targets:
            raise ConfigError(f"lora_targets: no target modules for family {family!r} and no 'default'")
        judge.model = get_peft_model(judge.model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                             lora_dropout=cfg.lora_dropout, target_modules=targets))
        if cfg.lora_save == "adapter":  # a preset by name (portable), else the base directory
            ckpt = ckpt.replace(adapter_of=cfg.model if not Path(cfg.model).exists() else str(path.resolve()),
                                adapter_base_digest=weights_file_digest(path))
    return judge.train(), ckpt


def _trainable_state(judge: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in judge.named_parameters() if v.requires_grad}


# ------------------------------------------------------------------ saving and evaluating
def save_judge(judge: torch.nn.Module, ckpt: CheckpointConfig, path: Path, cfg: TrainConfig,
               extra: dict[str, Any] | None = None) -> None:
    """A directory `rd.load` reads: weights (LoRA merged or as adapter), processor, rewarddance.json."""
    judge.save_pretrained(path, merge_adapter=cfg.lora_save == "merged")
    answer_ids = {"yes": judge.yes_ids, "no": judge.no_ids} if isinstance(judge, Judge) else {}
    write_checkpoint_config(path, ckpt.replace(answer_ids=answer_ids, training={
        "objective": cfg.objective, "data": cfg.data, "model": cfg.model, **(extra or {})}))


def evaluate(judge: torch.nn.Module, ckpt: CheckpointConfig, records: list[Any], cfg: TrainConfig) -> dict:
    """Held-out pair accuracy of the judge as it is now (the facade over the live weights): `accuracy*`, the
    pairs it counts (`n*`) and the rows that failed to score (`failed`, each reported)."""
    from ..evaluate import pairwise_accuracy, score_records

    was_training = judge.training
    judge.eval()
    rm = RewardModel(judge, ckpt)
    with torch.inference_mode():
        rows = score_records(rm, records, task=cfg.task, batch_size=cfg.eval_batch_size)
    judge.train(was_training)
    failed = [r["error"] for r in rows if "error" in r]
    report_skipped(failed, len(rows) - len(failed), "eval_data row(s)")
    return pairwise_accuracy(rows, records) | {"failed": len(failed)}


# ------------------------------------------------------------------ the run
def train(cfg: TrainConfig) -> Path:
    """Run the recipe; returns `output_dir/final`."""
    from transformers import get_scheduler

    if cfg.cot and cfg.cot_order == "rationale-first" and cfg.objective == "generative-pairwise":
        raise ConfigError("cot_order: rationale-first puts the judgment after the rationale, but rewards are read "
                          "right after the prompt (one forward pass); such a judge cannot score yet. Use "
                          "judgment-first (the paper's order)")
    accelerator = _accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    per_micro, rem = divmod(cfg.batch_size, world * cfg.grad_accum)
    if rem or per_micro == 0:
        raise ConfigError(f"batch_size: {cfg.batch_size} records must split evenly over {world} rank(s) x "
                          f"{cfg.grad_accum} micro-batch(es)")
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    records = load_training_records(cfg, accelerator)
    eval_records = []
    if cfg.eval_data and cfg.objective != NEXT_TOKEN:
        from ..data import read_manifest

        eval_records = list(read_manifest(cfg.eval_data))
        bad = [str(r) for r in eval_records if isinstance(r, RecordError)]
        eval_records = [r for r in eval_records if not isinstance(r, RecordError)][:cfg.eval_max]
        if accelerator.is_main_process:
            report_skipped(bad, len(eval_records), "eval_data row(s)")

    judge, ckpt = build_judge(cfg, world)
    params = [p for p in judge.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
    checkpointer = Checkpointer(out, keep=max(cfg.keep_checkpoints, 1))
    step, best, elapsed = 0, -1.0, 0.0
    latest = checkpointer.latest()
    if latest is not None:  # resume: weights, optimizer, schedule, RNG; the data position follows from `step`
        state = Checkpointer.load_state(latest)
        missing, unexpected = judge.load_state_dict(state["trainable"], strict=False)
        trainable = {k for k, p in judge.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise ConfigError(f"output_dir: {latest} was written by a run with other trainable weights (lora, "
                              "freeze_vision or objective changed?); use a new output_dir")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if state.get("lr", cfg.lr) != cfg.lr:  # the optimizer state would silently keep the old rate
            raise ConfigError(f"lr: {latest} was trained at lr {state['lr']}, this run asks for {cfg.lr}; resume "
                              "with the same lr or use a new output_dir")
        step, best, elapsed = state["step"], state["best"], state["elapsed"]
        _say(accelerator, f"resuming from {latest} (step {step})")
    module, optimizer = accelerator.prepare(judge, optimizer)
    # the prepared module's parameters: FSDP2 replaces them by sharded ones (the gradients live there), and
    # accelerate's FSDP clipping only acts when it is handed the model's full parameter list
    params = list(module.parameters())
    vision = [p for name, p in module.named_parameters() if p.requires_grad and is_vision_parameter(name)]
    log = MetricsLog(out, resume_step=step, tensorboard=cfg.tensorboard) if accelerator.is_main_process else None
    objective = OBJECTIVES[cfg.objective]
    kwargs = {"generative-pairwise": {"ties": cfg.ties, "cot_weight": cfg.cot_weight},
              "generative-pointwise": {"ties": cfg.ties, "ce_weight": cfg.ce_weight},
              "regressive-bt": {"ties": cfg.ties}, "clip-bt": {"ties": cfg.ties}, "next-token": {}}[cfg.objective]

    def save_checkpoint() -> None:
        if accelerator.is_main_process:
            state = {"step": step, "best": best, "elapsed": elapsed, "lr": cfg.lr, "trainable": _trainable_state(judge),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
            checkpointer.save(step, lambda p: save_judge(judge, ckpt, p, cfg, {"step": step}), state)
        accelerator.wait_for_everyone()

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.objective}", unit="step", file=sys.stderr,
               disable=not (cfg.progress and accelerator.is_main_process))
    window: dict[str, list[float]] = {}
    window_records, window_time = 0, 0.0
    warned_blind = False
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    stop = cfg.max_minutes is not None and elapsed >= cfg.max_minutes  # a finished run resumed: nothing to do
    while step < cfg.max_steps and not stop:
        t0 = time.perf_counter()
        chosen = step_records(step, len(records), cfg.batch_size, cfg.seed)
        mine = chosen[rank * per_micro * cfg.grad_accum:(rank + 1) * per_micro * cfg.grad_accum]
        batches = [Batch.join([_example(cfg, records[i]) for i in mine[m * per_micro:(m + 1) * per_micro]])
                   for m in range(cfg.grad_accum)]
        # each loss term is normalised by its item count over the WHOLE global batch (all ranks and
        # micro-batches), so ranks that drew more ties or rationales weigh exactly what they hold
        counts: dict[str, float] = {}
        for b in batches:
            for k, v in term_counts(b, cfg.ties).items():
                counts[k] = counts.get(k, 0) + v
        keys = sorted(counts)
        totals = accelerator.reduce(torch.tensor([counts[k] for k in keys], dtype=torch.float64,
                                                 device=accelerator.device), reduction="sum")
        den = {k: v / world for k, v in zip(keys, totals.tolist())}
        additive: dict[str, float] = {}  # loss terms: summed over micro-batches and ranks
        averaged: dict[str, list[float]] = {}  # accuracies: averaged
        for m, batch in enumerate(batches):
            sync = nullcontext() if m == cfg.grad_accum - 1 else accelerator.no_sync(module)
            with sync:
                with autocast:
                    scores = sequence_scores(module, judge, batch.sequences)
                loss, metrics = objective(scores, batch, den=den, **kwargs)
                accelerator.backward(loss)
            for k, v in metrics.items():
                if k.endswith("loss"):
                    additive[k] = additive.get(k, 0.0) + v / world
                else:
                    averaged.setdefault(k, []).append(v)
        averaged |= {k: [v] for k, v in grad_norms(params, vision, accelerator).items()}
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        elapsed += dt / 60.0
        names = sorted(additive) + sorted(averaged)
        summed = accelerator.reduce(torch.tensor([additive[k] for k in sorted(additive)], device=accelerator.device),
                                    reduction="sum")
        meaned = accelerator.reduce(torch.tensor([_nanmean(averaged[k]) for k in sorted(averaged)],
                                                 device=accelerator.device), reduction="mean")
        for k, v in zip(names, summed.tolist() + meaned.tolist()):
            window.setdefault(k, []).append(v)
        window_records += cfg.batch_size
        window_time += dt
        bar.update(1)
        if cfg.max_minutes is not None:  # every rank stops at the same step
            over = torch.tensor([float(elapsed >= cfg.max_minutes)], device=accelerator.device)
            stop = bool(accelerator.reduce(over, reduction="max").item())
        last = stop or step == cfg.max_steps
        if step % cfg.log_steps == 0 or last:
            row = {"step": step, **{k: _nanmean(v) for k, v in window.items()},
                   "samples_per_s": window_records / max(window_time, 1e-9), "lr": scheduler.get_last_lr()[0],
                   "minutes": elapsed}
            if eval_records and (step % cfg.eval_steps == 0 or last):
                if accelerator.is_main_process:
                    result = evaluate(judge, ckpt, eval_records, cfg)
                    row |= {f"eval_{k}": v for k, v in result.items()
                            if k.startswith("accuracy") or k in ("n", "failed")}
                    if result.get("accuracy", -1) > best:
                        best = result["accuracy"]
                        atomic_dir(out / "best", lambda p: save_judge(judge, ckpt, p, cfg,
                                                                      {"step": step, "eval": result}))
                accelerator.wait_for_everyone()
            if log is not None:
                log.log(row)
                if not warned_blind and (warning := blind_warning(row)):
                    warned_blind = True
                    bar.write(warning, file=sys.stderr)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row.get('accuracy') or float('nan'):.2f}",
                                sps=f"{row['samples_per_s']:.1f}")
            window, window_records, window_time = {}, 0, 0.0
        if step % cfg.save_steps == 0 and not last:
            save_checkpoint()
    bar.close()
    save_checkpoint()
    final = out / "final"
    # every rank's weights, fingerprinted: data-parallel training that silently ran apart shows here
    from accelerate.utils import gather_object

    digest = hashlib.sha1(b"".join(p.detach().float().cpu().numpy().tobytes() for p in judge.parameters()))
    checksums = gather_object([digest.hexdigest()])
    if accelerator.is_main_process:
        info = {"step": step, "minutes": round(elapsed, 2), "num_processes": world,
                "rank_weight_checksums": checksums}
        atomic_dir(final, lambda p: save_judge(judge, ckpt, p, cfg, info))
        if len(set(checksums)) > 1:
            print("warning: the ranks' weights differ after training (data-parallel was not synchronised)",
                  file=sys.stderr)
        log.close()
        log.plot()
        _say(accelerator, f"trained {step} steps in {elapsed:.1f} min -> {final}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def grad_norms(params: list[torch.nn.Parameter], vision: list[torch.nn.Parameter], accelerator: Any
               ) -> dict[str, float]:
    """Gradient norms before clipping: `grad_norm` over every trainable weight, `grad_norm_vision` over the
    vision encoder's (`is_vision_parameter`). A vision norm orders of magnitude below the total says the
    language model has stopped reading the image, which the loss curve does not show (pretraining the small
    preset at lr 1e-3, docs/training.md). Sharded gradients (FSDP) give the global norms. Empty where the
    parameters hold no gradients (DeepSpeed keeps them in its engine)."""
    from accelerate.utils import DistributedType
    from torch.distributed.tensor import DTensor

    def norm(ps: list[torch.nn.Parameter]) -> torch.Tensor:
        grads = [p.grad.detach() for p in ps if p.grad is not None]
        if not grads:
            return torch.zeros((), device=accelerator.device)
        n = torch.nn.utils.get_total_norm(grads)  # float32 accumulation, no copy of the gradients
        return n.full_tensor() if isinstance(n, DTensor) else n  # FSDP2: reduced over the shards

    if not any(p.grad is not None for p in params):
        return {}
    sq = torch.stack([norm(params), norm(vision)]).float().pow(2)
    if accelerator.distributed_type == DistributedType.FSDP and not isinstance(params[0], DTensor):
        sq = accelerator.reduce(sq, reduction="sum")  # FSDP1: each rank holds a flat shard of every gradient
    total, vis = sq.sqrt().tolist()
    return {"grad_norm": total, "grad_norm_vision": vis} if vision else {"grad_norm": total}


# the logged ratio grad_norm_vision / grad_norm (vision encoder and projector over everything), measured: healthy
# runs 0.1-0.8 (judge training from the tiny preset 0.12-0.24, pretraining small at lr 3e-4 ~0.5, the tiny
# preset's pretraining loss ~0.8); the small preset's pretraining stalled at lr 1e-3, ~2e-3
BLIND_RATIO = 1e-2


def blind_warning(row: dict[str, Any]) -> str | None:
    """A warning when a metrics row's vision gradient is under BLIND_RATIO of the total: the model has
    probably stopped reading the image (docs/training.md), which the loss does not show.

        >>> blind_warning({"step": 500, "grad_norm": 0.7, "grad_norm_vision": 9e-5})[:37]
        'warning: step 500: the vision encoder'
    """
    vision, total = row.get("grad_norm_vision"), row.get("grad_norm")
    if vision is None or not total or vision >= BLIND_RATIO * total:
        return None
    return (f"warning: step {row['step']}: the vision encoder's gradient is {vision / total:.1e} of the total: "
            "the model has probably stopped reading the image, and the loss will not show it; a lower lr "
            "usually avoids this (docs/training.md, 'Pretraining the small preset')")


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")
