"""Recipe: the main job. The whole RewardDance loop on ShapeWorld, on a fresh machine, in one report.

    rewarddance demo [--out runs/demo] [--quick] [--force] [key=value ...]

Seven stages, each one call into the recipes a user runs by hand, each resumable:
1. `data`: ShapeWorld preference pairs with rationales (train; test = ID and OOD halves);
2. `judges`: from the committed pretrained preset, a generative pairwise judge with CoT rationales and
   the regressive Bradley-Terry baseline on the same backbone, steps and batch (outside `--quick` also a
   second size, from scratch: the demo was measured before the small pretrained preset was committed);
3. `evaluate`: each judge on the test pairs (accuracy ID / OOD, with ties, position consistency,
   calibration), and each held-out prompt's reference by Best-of-N win counts under the best judge;
   `verdicts`: the best generative judge's verdicts on test pairs with its generated rationales;
4. `rl`: ReFL of the committed ShapeWorld generator against each judge (hacking monitor on), and the
   same held-out prompts sampled before and after, each image checked by the ShapeWorld checker;
5. `search`: Best-of-N and search over paths with the best judge;
6. `report`: OUT/metrics.json and OUT/report.html (one self-contained file, `demo_report.py`).

A stage is finished when OUT/stages/<stage>.json exists with the key of the settings it depends on
(its own and the keys of the stages it reads, STAGE_DEPS): a re-run skips it. A stage interrupted half-way keeps
its folder, and the recipe it calls (train, refl) resumes from its checkpoint; a stage whose settings
changed, or every stage with `--force`, starts again from an empty folder.

    >>> from rewarddance.recipes.demo import demo, load_demo_config
    >>> cfg = load_demo_config(quick=True, overrides=["out=runs/demo-quick"])   # QUICK's settings, then yours
    >>> metrics = demo(cfg, quick=True)                                         # doctest: +SKIP
    >>> metrics["headline"][0]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ConfigError, config_dict, load_config, save_config
from ..evaluate.report import pct
from ..train.engine import MetricsLog, atomic_write_text
from .steps import key_of, read_keyed, start_folder

STAGES = ("data", "judges", "evaluate", "verdicts", "rl", "search", "report")


@dataclass
class DemoConfig:
    """Settings of `rewarddance demo` (`--quick` starts from QUICK instead; override any with key=value)."""

    out: str = "runs/demo"
    seed: int = 0
    # 1. data
    data_n: int = 800  # training pairs (10% of labels flipped, as real preference data is noisy)
    data_n_test: int = 200  # clean test pairs, half ID, half OOD
    # 2. judges: the same steps and batch for every judge
    model: str = "qwen2_5_vl-tiny-shapeworld"  # the committed pretrained preset
    judge_steps: int = 100
    judge_batch_size: int = 16
    judge_lr: float = 1e-3
    second_size: str | None = "qwen2_5_vl-small"  # a second size of the generative judge (null: none)
    # the small size costs ~4.5 s a step here (tiny: ~0.7 s), so 10 minutes cannot give it judge_steps; its own
    # budget is shown beside its numbers
    second_size_steps: int = 20
    # 3. evaluation, references
    reference_candidates: int = 4  # Best-of-N pool of each held-out prompt's reference
    # 4. ReFL (held-out evaluation: ShapeWorld's compositional prompts x seeds, the checker as truth)
    generator: str = "shapeworld-flow"
    refl_steps: int = 15
    refl_lr: float = 1e-3  # at the recipe's 1e-4 a fresh LoRA barely moves in tens of steps (docs/rl.md)
    refl_prompts: int = 16
    num_steps: int = 20  # sampling steps, every stage
    eval_prompts_per_category: int = 4
    eval_seeds: int = 2
    # 5. inference-time scaling
    search_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    search_paths: list[int] = field(default_factory=lambda: [4])
    search_prompts_per_category: int = 3
    # 6. report
    examples: int = 6  # judge verdicts shown with their rationales
    grid_prompts: int = 8  # held-out prompts in the before/after sample grid
    progress: bool = True


# `--quick`: <= 3 minutes on 2 CPU cores (the test runs it smaller still)
QUICK = {"data_n": 300, "data_n_test": 100, "judge_steps": 30, "second_size": None, "reference_candidates": 2,
         "refl_steps": 6, "refl_prompts": 8, "num_steps": 10, "eval_prompts_per_category": 2, "eval_seeds": 2,
         "search_n": [1, 2, 4], "search_paths": [2], "search_prompts_per_category": 2, "examples": 4,
         "grid_prompts": 8}

# the settings each stage's results depend on, and the stages whose results it reads
STAGE_SETTINGS = {
    "data": ("seed", "data_n", "data_n_test"),
    "judges": ("model", "judge_steps", "judge_batch_size", "judge_lr", "second_size", "second_size_steps"),
    "evaluate": ("reference_candidates", "generator", "num_steps", "eval_prompts_per_category", "grid_prompts"),
    "verdicts": ("examples",),
    "rl": ("refl_steps", "refl_lr", "refl_prompts", "eval_seeds"),
    "search": ("search_n", "search_paths", "search_prompts_per_category"),
    "report": (),
}
STAGE_DEPS = {"data": (), "judges": ("data",), "evaluate": ("judges",), "verdicts": ("evaluate",),
              "rl": ("evaluate",), "search": ("evaluate",), "report": ("verdicts", "rl", "search")}


def load_demo_config(quick: bool, config_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()
                     ) -> DemoConfig:
    """DemoConfig from its defaults, then QUICK's (with `quick`), then a YAML file, then key=value overrides."""
    return load_config(DemoConfig, config_file, overrides, base=QUICK if quick else None)


# ------------------------------------------------------------------ stages
def _stage_keys(cfg: DemoConfig) -> dict[str, str]:
    """Each stage's key: a hash of its settings and of the keys of the stages it reads."""
    keys: dict[str, str] = {}
    for stage in STAGES:  # in order: a stage's dependencies come before it
        settings = {k: getattr(cfg, k) for k in STAGE_SETTINGS[stage]}
        keys[stage] = key_of([stage, settings, [keys[d] for d in STAGE_DEPS[stage]]])
    return keys


def _plain(value: Any) -> Any:
    """json.dumps' fallback: numpy scalars become Python ones (a numpy bool is not a string "True");
    anything else is an error, not a silent str()."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON data: {type(value).__name__}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Stages:
    """Runs stages once: OUT/stages/<stage>.json (key, seconds, result) marks a finished one."""

    def __init__(self, out: Path, keys: dict[str, str], force: bool) -> None:
        self.out, self.keys, self.force = out, keys, force
        self.ran = False  # whether any stage ran (not skipped) in this invocation
        (out / "stages").mkdir(parents=True, exist_ok=True)

    def run(self, stage: str, fn: Callable[[Path], dict[str, Any]], force: bool = False) -> dict[str, Any]:
        """`fn(folder)`'s result, from an earlier run when that finished with the same key (and not `force`)."""
        force = force or self.force
        done = self.out / "stages" / f"{stage}.json"
        folder = self.out / stage
        record = None if force else read_keyed(done, self.keys[stage])
        if record is not None:
            _say(f"[{stage}] finished earlier ({record['seconds']:.0f} s): skipped")
            return record
        if force:  # never resume a half-done folder under --force (start_folder resumes one of the same settings)
            shutil.rmtree(folder, ignore_errors=True)
        done.unlink(missing_ok=True)
        started = start_folder(folder, self.keys[stage])
        _say(f"[{stage}] ...")
        self.ran = True
        t0 = time.perf_counter()
        result = fn(folder)
        record = {"key": self.keys[stage], "seconds": round(time.perf_counter() - t0, 1), "result": result}
        atomic_write_text(done, json.dumps(record, indent=1, default=_plain) + "\n")
        started.unlink()
        _say(f"[{stage}] done in {record['seconds']:.0f} s")
        return record


def stage_data(cfg: DemoConfig, folder: Path) -> dict[str, Any]:
    from ..world.dataset import build_world

    counts = build_world(folder, cfg.data_n, seed=cfg.seed, n_test=cfg.data_n_test, n_video=0,
                         progress=cfg.progress)
    return {"counts": {"train": counts["train.jsonl"], "test": counts["test.jsonl"]},
            "train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}


def _judge_model(model: str) -> tuple[str, str, str]:
    """(label, arch, start) of a judge's starting model: a preset name or a checkpoint directory."""
    from ..models.presets import parse_preset_name

    parsed = parse_preset_name(model)
    if parsed is not None:
        return parsed[1], parsed[0], "pretrained" if model.endswith("-shapeworld") else "scratch"
    path = Path(model)
    name = path.parent.name if path.name in ("final", "best") else path.name
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name), "checkpoint", "checkpoint"  # no dots: names are metric paths


def judge_specs(cfg: DemoConfig) -> list[dict[str, Any]]:
    """The demo's judges: name (unique; a folder name), objective, model, size, arch, start, steps."""
    models = [(cfg.model, "generative-pairwise", cfg.judge_steps), (cfg.model, "regressive-bt", cfg.judge_steps)]
    if cfg.second_size:
        models.append((cfg.second_size, "generative-pairwise", cfg.second_size_steps))
    specs = []
    for model, objective, steps in models:
        size, arch, start = _judge_model(model)
        specs.append({"name": f"{objective}-{size}", "objective": objective, "model": model, "size": size,
                      "arch": arch, "start": start, "steps": steps})
    if len({s["name"] for s in specs}) < len(specs):  # e.g. a second model of the same size: name the family
        for spec in specs:
            spec["name"] = f"{spec['objective']}-{spec['arch']}-{spec['size']}"
    if len({s["name"] for s in specs}) < len(specs):
        raise ConfigError(f"second_size: {cfg.second_size!r} is the judge model itself ({cfg.model!r})")
    return specs


def stage_judges(cfg: DemoConfig, folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    from .train_rm import TrainConfig, train

    from ..models.checkpoint import read_checkpoint_config

    judges = []
    for spec in judge_specs(cfg):
        final = train(TrainConfig(model=spec["model"], data=data["train"], objective=spec["objective"],
                                  output_dir=str(folder / spec["name"]), max_steps=spec["steps"],
                                  batch_size=cfg.judge_batch_size, lr=cfg.judge_lr, seed=cfg.seed,
                                  eval_steps=10**9, save_steps=max(spec["steps"] // 2, 1), tensorboard=False,
                                  progress=cfg.progress))
        # the run's own training minutes (summed over resumes), not this call's
        minutes = read_checkpoint_config(final).training["minutes"]
        judges.append({**spec, "path": str(final), "train_steps": spec["steps"], "train_minutes": minutes})
    return {"judges": judges}


def stage_evaluate(cfg: DemoConfig, folder: Path, data: dict[str, Any], judges: list[dict]) -> dict[str, Any]:
    import rewarddance as rd

    from ..evaluate.references import generator_references
    from ..generators import load_generator, generator_path
    from ..world.generation import COMPOSITIONAL, checker_metric, heldout_prompts
    from .evaluate_rm import evaluate

    table, rm = [], None  # rm: the most accurate judge so far (the first of equals, as max() picks below)
    for j in judges:
        candidate = rd.load(j["path"])
        r = evaluate(candidate, [data["test"]], json_out=folder / f"{j['name']}.json", progress=cfg.progress,
                     model_name=j["name"])
        row = {k: j[k] for k in ("name", "objective", "size", "arch", "start", "train_steps", "train_minutes")}
        splits = r.get("splits", {})  # a split with no scored pair is absent: its numbers are n/a
        for subset, metrics in (("", r["overall"]), ("_id", splits.get("id", {})), ("_ood", splits.get("ood", {}))):
            row[f"accuracy{subset}"] = metrics.get("accuracy")
            row[f"accuracy_with_ties{subset}"] = metrics.get("accuracy_with_ties")
        row["tie_threshold"] = r["overall"].get("tie_threshold")
        row["position_consistency"] = r["overall"].get("position_consistency")
        row["ece"] = r["overall"].get("ece")
        if rm is None or row["accuracy"] > max(t["accuracy"] for t in table):
            rm = candidate  # kept for the references below; the others are let go, not held all at once
        table.append(row)
    best = max(table, key=lambda r: r["accuracy"])
    generative = [r for r in table if r["objective"].startswith("generative")]
    best_generative = max(generative, key=lambda r: r["accuracy"])  # the verdicts' judge: it can explain
    paths = {j["name"]: j["path"] for j in judges}

    # each held-out prompt's reference: Best-of-N win counts under the best judge (rm), from the starting generator
    heldout = list(heldout_prompts(list(COMPOSITIONAL), cfg.eval_prompts_per_category, 1234).values())
    # categories interleaved, so that a short grid still shows every kind of prompt
    prompts = [ps[i] for i in range(max(map(len, heldout))) for ps in heldout if i < len(ps)][:cfg.grid_prompts]
    gen = load_generator(generator_path(cfg.generator))
    refs = generator_references(gen, rm, prompts, n=cfg.reference_candidates, seed=cfg.seed, num_steps=cfg.num_steps,
                                progress=cfg.progress)
    images = torch.stack([refs[i] for i in range(len(prompts))])
    passed, _ = checker_metric(images, prompts)
    save_images(images, folder / "references")
    references = [{"prompt": p, "image": str(folder / "references" / f"{i:03d}.png"), "passed": bool(ok)}
                  for i, (p, ok) in enumerate(zip(prompts, passed))]
    return {"table": table, "best": best["name"], "best_generative": best_generative["name"], "paths": paths,
            "references": references}


def stage_verdicts(cfg: DemoConfig, data: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    import rewarddance as rd

    name = evaluation["best_generative"]
    return {"judge": name, "verdicts": judge_verdicts(rd.load(evaluation["paths"][name]), data["test"],
                                                      cfg.examples)}


def judge_verdicts(rm: Any, test: str, n: int) -> list[dict[str, Any]]:
    """The judge's verdict and generated rationale on `n` test pairs (ID and OOD alternate), beside the
    checker's truth and the rationale written from it."""
    rows = [json.loads(line) for line in Path(test).read_text().splitlines() if line.strip()][:n]
    out = []
    for r in rows:
        a, b = (Path(test).parent / r["image_a"], Path(test).parent / r["image_b"])
        # the pairwise layout: image 1 = the reference (a), image 2 = the candidate (b); P(yes) = P(b better)
        p_b, rationale = rm.explain(r["prompt"], str(b), reference=str(a), max_new_tokens=48)
        out.append({"id": r["id"], "prompt": r["prompt"], "split": r["split"], "image_a": str(a), "image_b": str(b),
                    "p_b_better": float(p_b), "verdict": "b" if p_b > 0.5 else "a", "truth": r["label"],
                    "correct": ("b" if p_b > 0.5 else "a") == r["label"], "rationale": rationale.strip(),
                    "truth_rationale": r.get("rationale", "")})
    return out


def save_images(images: torch.Tensor, folder: Path) -> None:
    """N×3×H×W in [0, 1] -> folder/000.png, 001.png, ..."""
    from ..media import to_pil

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        to_pil(img).save(folder / f"{i:03d}.png")


def _grid(gen_dir: str, prompts: list[str], cfg: DemoConfig, folder: Path) -> list[bool]:
    """Samples of `prompts` (seed 0 each) from the generator in `gen_dir`, saved to `folder`; checker verdicts."""
    from ..generators import load_generator
    from ..world.generation import checker_metric

    gen = load_generator(gen_dir)
    with torch.no_grad():
        images = gen.sample(prompts, seeds=[0] * len(prompts), num_steps=cfg.num_steps).images
    save_images(images, folder)
    return [bool(v) for v in checker_metric(images, prompts)[0]]


def _curve(run_dir: Path) -> list[dict[str, Any]]:
    keep = ("step", "reward_mean", "reward_std_window", "diversity", "eval_diversity", "gt_pass_rate", "alarms")
    return [{k: r.get(k) for k in keep} for r in MetricsLog.read(run_dir) if "reward_mean" in r]


def stage_rl(cfg: DemoConfig, folder: Path, evaluation: dict[str, Any]) -> dict[str, Any]:
    from ..generators import generator_path
    from .refl import ReFLConfig, refl

    prompts = [r["prompt"] for r in evaluation["references"]]
    arms = []
    samples = {"prompts": prompts, "before": _grid(str(generator_path(cfg.generator)), prompts, cfg,
                                                    folder / "samples" / "before")}
    for row in evaluation["table"]:
        name = row["name"]
        out = refl(ReFLConfig(rm=evaluation["paths"][name], generator=cfg.generator, output_dir=str(folder / name),
                              max_steps=cfg.refl_steps, lr=cfg.refl_lr, n_prompts=cfg.refl_prompts,
                              num_steps=cfg.num_steps, grad_steps=[cfg.num_steps * 7 // 10, cfg.num_steps - 1],
                              reference_candidates=cfg.reference_candidates, eval_steps=max(cfg.refl_steps // 2, 1),
                              eval_prompts_per_category=cfg.eval_prompts_per_category, eval_seeds=cfg.eval_seeds,
                              seed=cfg.seed, save_steps=max(cfg.refl_steps // 2, 1), tensorboard=False,
                              progress=cfg.progress))
        report = json.loads((out / "report.json").read_text())
        samples[name] = _grid(str(out / "final"), prompts, cfg, folder / "samples" / name)
        arms.append({"judge": name, **{k: report.get(k) for k in (
            "steps", "train_minutes", "gt_pass_rate_before", "gt_pass_rate_after", "reward_mean_before",
            "reward_mean_after", "diversity_before", "diversity_after", "reward_std_window_last", "hacking_flagged",
            "alarms")}, "curve": _curve(out)})
    return {"arms": arms, "samples": samples}


def stage_search(cfg: DemoConfig, folder: Path, evaluation: dict[str, Any]) -> dict[str, Any]:
    from .search import SearchConfig, run_search

    result = run_search(SearchConfig(rm=evaluation["paths"][evaluation["best"]], generator=cfg.generator,
                                     output_dir=str(folder), n=cfg.search_n, paths=cfg.search_paths,
                                     num_steps=cfg.num_steps, reference_candidates=cfg.reference_candidates,
                                     eval_prompts_per_category=cfg.search_prompts_per_category, seed=cfg.seed,
                                     progress=cfg.progress), "search")
    keep = ("random_sample_gt_pass_rate", "best_of_n", "search", "search_vs_best_of_n", "prompts")
    return {"judge": evaluation["best"], **{k: result.get(k) for k in keep}}


# ------------------------------------------------------------------ metrics and the summary
def headline(m: dict[str, Any]) -> list[str]:
    """The five lines the demo ends with (also at the top of the report)."""
    judges = m["judges"]
    best = next(j for j in judges if j["name"] == m["best_judge"])
    rl = "; ".join(f"{a['judge']} {pct(a['gt_pass_rate_before'])} -> {pct(a['gt_pass_rate_after'])}"
                   + (" (hacking alarm)" if a["hacking_flagged"] else "") for a in m["rl"])
    s = m["search"]
    bon = s["best_of_n"]
    paths = s["search_vs_best_of_n"]
    search = "; ".join(f"search over {c['paths']} paths {pct(c['search_gt_pass_rate'])} vs Best-of-N at the same "
                       f"{c['judge_calls']} judge calls {pct(c['best_of_n_gt_pass_rate'])}" for c in paths)
    return [
        "Judges (test accuracy ID / OOD): " + "; ".join(
            f"{j['name']} {pct(j['accuracy_id'])} / {pct(j['accuracy_ood'])}" for j in judges),
        f"Best judge: {best['name']}, position consistency {pct(best['position_consistency'])}, "
        f"ECE {'n/a' if best['ece'] is None else format(best['ece'], '.3f')}",
        f"ReFL, checker pass rate on held-out prompts before -> after: {rl}",
        f"Best-of-N with {best['name']}: N=1 {pct(bon[0]['gt_pass_rate'])} -> N={bon[-1]['n']} "
        f"{pct(bon[-1]['gt_pass_rate'])}; {search}",
        f"Wall time {m['total_minutes']:.1f} min on {m['machine']['cpus']} CPU cores"
        + (f" ({m['machine']['gpu']})" if m["machine"].get("gpu") else "") + "; report: " + m["report"],
    ]


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


def demo(cfg: DemoConfig, *, quick: bool = False, force: bool = False) -> dict[str, Any]:
    """Run (or resume) the demo; returns metrics.json's content."""
    from .demo_report import write_report

    out = Path(cfg.out).resolve()  # the stages' records hold paths: the same from any working directory
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, _stage_keys(cfg), force)
    data = stages.run("data", lambda f: stage_data(cfg, f))
    judges = stages.run("judges", lambda f: stage_judges(cfg, f, data["result"]))
    evaluation = stages.run("evaluate", lambda f: stage_evaluate(cfg, f, data["result"], judges["result"]["judges"]))
    verdicts = stages.run("verdicts", lambda f: stage_verdicts(cfg, data["result"], evaluation["result"]))
    rl = stages.run("rl", lambda f: stage_rl(cfg, f, evaluation["result"]))
    search = stages.run("search", lambda f: stage_search(cfg, f, evaluation["result"]))
    records = {"data": data, "judges": judges, "evaluate": evaluation, "verdicts": verdicts, "rl": rl,
               "search": search}

    def report(folder: Path) -> dict[str, Any]:
        save_config(cfg, out / "config.yaml")  # beside the report it describes
        metrics = collect_metrics(cfg, records, quick=quick, report=out / "report.html")
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=_plain) + "\n")
        write_report(metrics, out / "report.html")
        return {"report": str(out / "report.html"), "metrics": str(out / "metrics.json")}

    # the report is redone whenever a stage before it ran now: it shows what is on disk
    stages.run("report", report, force=stages.ran)
    return json.loads((out / "metrics.json").read_text())


def collect_metrics(cfg: DemoConfig, records: dict[str, dict], *, quick: bool, report: Path) -> dict[str, Any]:
    """metrics.json: every number the report shows, from the stages' results."""
    ev = records["evaluate"]["result"]
    metrics = {
        "title": "rewarddance demo" + (" (--quick)" if quick else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "quick": quick,
        "config": config_dict(cfg),
        "stage_seconds": {k: r["seconds"] for k, r in records.items()},
        "total_minutes": round(sum(r["seconds"] for r in records.values()) / 60, 2),
        "data": records["data"]["result"]["counts"],
        "judges": ev["table"],
        "best_judge": ev["best"],
        "references": ev["references"],
        "verdicts_judge": records["verdicts"]["result"]["judge"],
        "verdicts": records["verdicts"]["result"]["verdicts"],
        "rl": records["rl"]["result"]["arms"],
        "samples": records["rl"]["result"]["samples"],
        "search": records["search"]["result"],
        "report": str(report),
    }
    metrics["headline"] = headline(metrics)
    return metrics
