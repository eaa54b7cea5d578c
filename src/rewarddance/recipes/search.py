"""Recipe: inference-time scaling with a judge, measured by the ground truth: Best-of-N and search over paths.

    rewarddance rl best-of-n rm=runs/judge/final n=[1,2,4,8,16]
    rewarddance rl search rm=runs/judge/final paths=[4,8] branches=2 every=5
    rewarddance rl best-of-n remote=http://127.0.0.1:8000          # the judge behind `rewarddance serve`
    torchrun --standalone --nproc_per_node 2 -m rewarddance.cli rl search rm=...   # prompts split over processes

For every held-out prompt (fixed: `eval_prompts_per_category` per category, drawn from
`eval_seed`) and each of `repeats` independent draws, the generator's samples are scored by the
judge and the pick is checked by the ground truth (ShapeWorld's checker):

- best-of-n: max(n) samples are drawn once and scored once; Best-of-N for each n is the best of
  the first n (nested, so the curve is monotone in compute and its points share samples). Also
  reported: the pass rate of a random sample (n = 1) and pass@n (any of the n passes: what a
  perfect judge would reach).
- search: `rl.search.search_over_paths` for each population size in `paths`, beside Best-of-N
  at the SAME number of judge calls (and its generator evaluations), so the two are compared
  at equal judge compute.

Scoring (`scorer`): a pointwise judge's reward, or a pairwise judge's P(sample beats the prompt's
reference), the reference being the Best-of-N pick by win counts among `reference_candidates`
samples drawn from other seeds. Writes results.json, results.md and gain.png under output_dir.
Every (repeat, prompt) is independent of the others (its seeds come from its indices), so under
torchrun each process takes every world-th one and the merged table equals one process's.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import ConfigError, config_dict, save_config
from ..evaluate.scoring import shard_info
from ..generators import ShapeWorldGenerator, generator_path
from ..rl.search import best_of_n, search_over_paths
from ..world.generation import COMPOSITIONAL, checker_metric, heldout_prompts
from .rl_common import gather_objects, load_judge, starting_references


@dataclass
class SearchConfig:
    """Settings of `rewarddance rl best-of-n` / `rl search` (YAML keys; override any with key=value)."""

    rm: str | None = None  # the judge: a checkpoint directory or preset name (or give remote)
    remote: str | None = None  # or the URL of a `rewarddance serve` server scoring for this run
    generator: str = "shapeworld-flow"  # a generator directory, or the name of a committed one
    task: str | None = None
    rm_dtype: Literal["float32", "bfloat16"] = "float32"
    output_dir: str = "runs/search"
    n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # best-of-n: the budgets
    paths: list[int] = field(default_factory=lambda: [4, 8])  # search: the population sizes
    branches: int = 2
    every: int = 5  # search: a checkpoint every this many steps
    back: int = 2  # search: how many steps up the schedule a branch is re-noised
    num_steps: int = 20
    guidance_scale: float = 3.0
    reference_candidates: int = 4  # pairwise judges: Best-of-N pool for each prompt's reference
    eval_categories: list[str] = field(default_factory=lambda: list(COMPOSITIONAL))
    eval_prompts_per_category: int = 16
    eval_seed: int = 1234
    repeats: int = 1  # independent draws per prompt (different seeds)
    seed: int = 0
    progress: bool = True


def make_score(rm: Any, references: dict[str, torch.Tensor] | None, task: str | None):
    """score(images, prompt) -> N: the judge's reward (pointwise) or P(image beats the prompt's reference)."""
    def score(images: torch.Tensor, prompt: str) -> torch.Tensor:
        refs = None if references is None else [references[prompt]] * len(images)
        return torch.tensor(rm.score(prompt, list(images), references=refs, task=task))
    return score


def _pass(images: torch.Tensor, prompt: str) -> list[bool]:
    return list(checker_metric(images, [prompt] * len(images))[0])


def run_search(cfg: SearchConfig, method: Literal["best-of-n", "search"], command: str | None = None) -> dict:
    """Run the recipe; returns (and writes) results.json's content."""
    from tqdm import tqdm

    if not cfg.n or min(cfg.n) < 1 or (method == "search" and (not cfg.paths or min(cfg.paths) < 1)):
        raise ConfigError("n and paths: lists of positive budgets")
    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    rank, world = shard_info()  # under torchrun each process takes every world-th (repeat, prompt)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    rm = load_judge(cfg.rm, cfg.remote, dtype=cfg.rm_dtype)
    gen = ShapeWorldGenerator.from_pretrained(generator_path(cfg.generator))
    prompts = [p for ps in heldout_prompts(cfg.eval_categories, cfg.eval_prompts_per_category,
                                           cfg.eval_seed).values() for p in ps]
    items = [(rep, i) for rep in range(cfg.repeats) for i in range(len(prompts))]
    references = None
    if rm.layout == "pairwise":
        refs = starting_references(gen, rm, prompts, n=cfg.reference_candidates, seed=cfg.seed + 1,
                                   num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale, task=cfg.task,
                                   rank=rank, world=world, progress=cfg.progress)
        references = dict(zip(prompts, refs))
    score = make_score(rm, references, cfg.task)

    def run_items(label: str, fn: Any) -> list[Any]:
        """fn(rep, i) for every item, this process's share, merged in item order on every process."""
        done = {item: fn(*item) for item in tqdm(items[rank::world], desc=label, unit="prompt", file=sys.stderr,
                                                 disable=not cfg.progress or rank != 0)}
        merged = {k: v for part in gather_objects(done, world) for k, v in part.items()}
        return [merged[item] for item in items]

    # search first: its judge-call counts set the Best-of-N budgets it is compared with
    search_points: list[dict[str, Any]] = []
    budgets = sorted(set(cfg.n) | {1})  # n = 1: a random sample, the baseline
    if method == "search":
        for paths in sorted(set(cfg.paths)):
            def one_search(rep: int, i: int, paths: int = paths) -> tuple[bool, float, int, int]:
                res = search_over_paths(gen, prompts[i], score, paths=paths, branches=cfg.branches, every=cfg.every,
                                        back=cfg.back, num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale,
                                        seed=cfg.seed * 1_000 + rep * 1_000_003 + i)
                return _pass(res.image[None], prompts[i])[0], res.score, res.judge_calls, res.nfe

            results = run_items(f"search paths={paths}", one_search)
            search_points.append({"method": "search", "paths": paths, "branches": cfg.branches,
                                  "judge_calls": results[0][2], "nfe": results[0][3],
                                  "gt_pass_rate": float(np.mean([r[0] for r in results])),
                                  "judge_score_mean": float(np.mean([r[1] for r in results]))})
        budgets = sorted(set(budgets) | {p["judge_calls"] for p in search_points})

    # Best-of-N, nested: max(budgets) samples per prompt and repeat, each scored once
    n_max = max(budgets)

    def one_best_of_n(rep: int, i: int) -> tuple[list[bool], list[float]]:
        seeds = [cfg.seed * 1_000_000 + rep * 100_003 + i * n_max + j for j in range(n_max)]
        res = best_of_n(gen, prompts[i], seeds, score, num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale)
        return _pass(res.images, prompts[i]), res.scores.tolist()

    picks = {n: [] for n in budgets}
    pass_at = {n: [] for n in budgets}
    score_at = {n: [] for n in budgets}
    for ok, item_scores in run_items(f"best-of-{n_max}", one_best_of_n):
        for n in budgets:
            best = int(np.argmax(item_scores[:n]))
            picks[n].append(ok[best])
            pass_at[n].append(any(ok[:n]))
            score_at[n].append(float(item_scores[best]))
    bon_points = [{"method": "best-of-n", "n": n, "judge_calls": n, "nfe": n * cfg.num_steps,
                   "gt_pass_rate": float(np.mean(picks[n])), "pass_at_n": float(np.mean(pass_at[n])),
                   "judge_score_mean": float(np.mean(score_at[n]))} for n in budgets]
    baseline = float(np.mean(picks[1]))
    comparison = []
    for sp in search_points:
        bon = next(p for p in bon_points if p["n"] == sp["judge_calls"])
        comparison.append({"paths": sp["paths"], "judge_calls": sp["judge_calls"],
                           "search_gt_pass_rate": sp["gt_pass_rate"], "best_of_n_gt_pass_rate": bon["gt_pass_rate"],
                           "difference": sp["gt_pass_rate"] - bon["gt_pass_rate"],
                           "search_nfe": sp["nfe"], "best_of_n_nfe": bon["nfe"]})
    result = {
        "method": method, "rm": str(cfg.rm or cfg.remote), "layout": rm.layout, "generator": str(cfg.generator),
        "prompts": len(prompts), "repeats": cfg.repeats, "random_sample_gt_pass_rate": baseline,
        "best_of_n": bon_points, "search": search_points, "search_vs_best_of_n": comparison,
        "minutes": round((time.perf_counter() - t0) / 60, 2), "processes": world,
        "command": command or " ".join(["rewarddance", "rl", method]), "config": config_dict(cfg),
    }
    if rank == 0:
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "results.md").write_text(markdown(result) + "\n")
        plot_gain(result, out / "gain.png")
        print(markdown(result), file=sys.stderr)
    return result


def markdown(result: dict) -> str:
    lines = [f"# {result['method']}: ground-truth pass rate of the judge's pick", "",
             f"`{result['command']}`; judge `{result['rm']}` ({result['layout']}), {result['prompts']} held-out "
             f"prompts x {result['repeats']} draws, {result['minutes']} min.", "",
             "| method | budget | judge calls | generator NFE | gt pass rate | pass@n (perfect judge) |",
             "|---|---|---|---|---|---|"]
    for p in result["best_of_n"]:
        lines.append(f"| best-of-n | n={p['n']} | {p['judge_calls']} | {p['nfe']} | {p['gt_pass_rate']:.1%} "
                     f"| {p['pass_at_n']:.1%} |")
    for p in result["search"]:
        lines.append(f"| search | paths={p['paths']}, branches={p['branches']} | {p['judge_calls']} | {p['nfe']} "
                     f"| {p['gt_pass_rate']:.1%} | |")
    for c in result["search_vs_best_of_n"]:
        lines.append("")
        lines.append(f"At {c['judge_calls']} judge calls: search {c['search_gt_pass_rate']:.1%} vs Best-of-N "
                     f"{c['best_of_n_gt_pass_rate']:.1%} ({c['difference']:+.1%}).")
    return "\n".join(lines)


def gain_figure(result: dict) -> Any:
    """A matplotlib figure: ground-truth pass rate of the judge's pick vs judge calls (log scale), Best-of-N,
    pass@n (what a perfect judge would pick from the same samples) and search over paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bon = result["best_of_n"]
    ax.plot([p["judge_calls"] for p in bon], [p["gt_pass_rate"] for p in bon], marker="o", label="Best-of-N")
    ax.plot([p["judge_calls"] for p in bon], [p["pass_at_n"] for p in bon], ls=":", color="grey",
            label="pass@n (perfect judge)")
    if result["search"]:
        sp = result["search"]
        ax.plot([p["judge_calls"] for p in sp], [p["gt_pass_rate"] for p in sp], marker="s", label="search over paths")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("judge calls per prompt")
    ax.set_ylabel("ground-truth pass rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_gain(result: dict, path: Path) -> Path:
    """gain_figure as a PNG."""
    import matplotlib.pyplot as plt

    fig = gain_figure(result)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def command_line(method: str, config_file: str | None, overrides: list[str]) -> str:
    parts = ["rewarddance", "rl", method] + (["--config", config_file] if config_file else []) + overrides
    return " ".join(shlex.quote(p) for p in parts)
