"""Recipe: the reward-model study. The paper's reward-model findings in miniature, on ShapeWorld, with our numbers.

    rewarddance study rm --out runs/study-rm                 # full (resumable: finished arms are skipped)
    rewarddance study rm --quick --out runs/study-rm-quick   # <= 15 minutes on 2 CPU cores, committed presets only

Every arm trains through `rewarddance train` and is measured by `rewarddance eval` on the same clean test
pairs (half ID, half OOD), with the same data, number of steps and batch size (wall-clock minutes are
reported beside them, not equalised: equal minutes would favour small models by construction). The arms,
each a row of OUT/results.json (the contract), grouped as the paper's tables are:
- `paradigm` (Table 7 + the CLIP argument): clip-bt, regressive-bt, generative-pointwise, generative-pairwise;
- `size` (Table 2): tiny / small / medium from their pretrained start and from scratch (a preset that is not
  committed is pretrained first by `rewarddance train`; that time is `pretrain_minutes`, not `train_minutes`);
- `family`: the pairwise judge on another architecture than Qwen2.5-VL;
- `context` (Tables 8-9): pointwise with the plain instruction -> with the task instruction -> pairwise ->
  + CoT rationales (inference stays judgment-only);
- `data`: the pairwise judge on 25% / 50% / 100% of the training pairs;
- `video`: text-to-video and image-to-video judges on ShapeWorld video pairs (their own test pairs);
- `seeds`: the headline arms (generative-pairwise, regressive-bt, clip-bt) again with seeds 1 and 2.
`--quick` keeps one arm per objective and a second size of the pairwise judge (small, from its committed
pretrained preset), with less data and fewer steps; the code is the same.

Outputs: OUT/results.json, OUT/results.md (the table, mean ± std over seeds where repeated), OUT/*.png
(accuracy vs size, ID vs OOD per paradigm, learning curves), and OUT/arms/<name>/ (train run, eval).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..evaluate.report import pct
from ..models.checkpoint import read_checkpoint_config
from ..models.presets import cache_root
from ..train.engine import MetricsLog, atomic_write_text
from .steps import EVAL_DTYPE, cli_command, eval_step, key_of, read_keyed, run_step, start_folder, write_json

OBJECTIVES = ("generative-pairwise", "generative-pointwise", "regressive-bt", "clip-bt")


@dataclass
class Arm:
    """One trained and evaluated judge of the study."""

    name: str
    group: str  # the study's table it belongs to: paradigm, size, family, context, data, video, seeds
    objective: str = "generative-pairwise"
    arch: str = "qwen2_5_vl"  # the preset family ("clip" for clip-bt's own dual encoder)
    size: str = "tiny"  # the preset size (clip-bt: its own config's size)
    start: str = "pretrained"  # pretrained | scratch
    context: str = "pairwise+task+cot"  # layout + instruction (+ cot): what the judge is trained with
    seed: int = 0
    data: str = "image"  # image | t2v | i2v
    data_fraction: float = 1.0
    overrides: list[str] = field(default_factory=list)  # extra `rewarddance train` keys

    @property
    def model(self) -> str:
        if self.objective == "clip-bt":
            return "clip"  # built from config by the recipe (clip_size)
        return f"{self.arch}-{self.size}" + ("-shapeworld" if self.start == "pretrained" else "")


@dataclass
class StudySettings:
    """What differs between the quick and the full study."""

    data_n: int = 4000  # training pairs (10% of labels flipped)
    data_n_test: int = 800  # clean test pairs: 400 ID + 400 OOD
    video_n: int = 400  # video pairs (t2v and i2v arms)
    # every arm, the same. Measured here (batch 16): tiny ~0.7 s a step, small ~4 s, medium ~12 s; at 200 steps
    # the two medium arms take ~80 of the full study's 180 minutes
    steps: int = 200
    batch_size: int = 16
    sizes: list[str] = field(default_factory=lambda: ["tiny", "small", "medium"])
    other_family: str = "smolvlm"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    # reference quality: per held-out prompt of each compositional category, `ref_pool` generator samples to
    # choose the reference from and `ref_ranked` others for the judge to rank against it
    ref_prompts_per_category: int = 12
    ref_pool: int = 4
    ref_ranked: int = 6
    generator: str = "shapeworld-flow"
    quick: bool = False


FULL = StudySettings()
QUICK = StudySettings(data_n=1000, data_n_test=400, steps=100, sizes=["tiny", "small"], seeds=[0], fractions=[1.0],
                      ref_prompts_per_category=6, quick=True)


def arms_for(s: StudySettings) -> list[Arm]:
    """The study's arms (a name appears once; an arm shared by two tables is listed in the first)."""
    contexts = {"generative-pairwise": "pairwise+task+cot", "clip-bt": "dual-encoder"}
    clip = {"arch": "clip", "size": "small", "start": "scratch"}  # its own dual encoder, built from config
    arms = [Arm(f"paradigm-{o}", "paradigm", objective=o, context=contexts.get(o, "pointwise+task"),
                **(clip if o == "clip-bt" else {}))
            for o in OBJECTIVES]
    if s.quick:
        return arms + [Arm("size-small-pretrained", "size", size="small")]
    # the cheap tiny arms first; then the larger sizes from scratch; last the arms whose start is not committed
    # (pretrained first, which takes hours here): an interrupted study still leaves the most tables
    scratch = [Arm(f"size-{size}-scratch", "size", size=size, start="scratch") for size in s.sizes]
    # the family arm's tiny preset pretrains in about half an hour; the larger sizes take hours, so they come last
    pretrain_first = [Arm(f"family-{s.other_family}-tiny", "family", arch=s.other_family)]
    pretrain_first += [Arm(f"size-{size}-pretrained", "size", size=size) for size in s.sizes if size != "tiny"]
    # the context ladder: pointwise+plain -> pointwise+task (paradigm-generative-pointwise) -> pairwise+task
    # -> pairwise+task+cot (paradigm-generative-pairwise)
    arms += [Arm("context-pointwise-plain", "context", objective="generative-pointwise", context="pointwise+plain",
                 overrides=["task=plain"]),
             Arm("context-pairwise-task", "context", context="pairwise+task", overrides=["cot=false"])]
    arms += [Arm(f"data-{int(100 * f)}", "data", data_fraction=f) for f in s.fractions if f < 1.0]
    arms += [Arm("video-t2v", "video", data="t2v", context="pairwise+task+cot"),
             Arm("video-i2v", "video", data="i2v", context="pairwise+task+cot")]
    for seed in s.seeds[1:]:
        for o in ("generative-pairwise", "regressive-bt", "clip-bt"):
            base = next(a for a in arms if a.name == f"paradigm-{o}")
            arms.append(replace(base, name=f"seed{seed}-{o}", group="seeds", seed=seed))
    return arms + scratch + pretrain_first


# ------------------------------------------------------------------ data
def _rewrite(src: Path, dst: Path, *, task: str | None = None, fraction: float = 1.0,
             only_task: str | None = None) -> Path:
    """A copy of manifest `src` beside it: its rows (those of `only_task`), the first `fraction` of them, with
    `task` set on each."""
    if dst.exists():
        return dst
    rows = [json.loads(t) for t in src.read_text().splitlines() if t.strip()]
    if only_task is not None:
        rows = [r for r in rows if r.get("task") == only_task]
    rows = rows[:max(1, round(len(rows) * fraction))]
    if task is not None:
        rows = [{**r, "task": task} for r in rows]
    return atomic_write_text(dst, "".join(json.dumps(r) + "\n" for r in rows))


def prepare_data(s: StudySettings, log: Path) -> Path:
    """ShapeWorld preference data (with video pairs unless quick), cached in the user's cache."""
    root = cache_root() / "study-rm" / f"world-{s.data_n}-{s.data_n_test}-{0 if s.quick else s.video_n}"
    if not (root / "datasheet.md").exists():  # build_world's last file: the data are complete
        cmd = [*cli_command(), "data", "world", "--out", str(root), "--n", str(s.data_n),
               "--n-test", str(s.data_n_test)]
        if not s.quick:
            cmd += ["--video", "--n-video", str(s.video_n)]
        run_step(cmd, log)
    return root


def arm_files(arm: Arm, data: Path) -> tuple[Path, Path]:
    """(train manifest, test manifest) of an arm."""
    if arm.data != "image":  # ShapeWorld's video files hold both tasks' rows
        task = f"{arm.data}-overall"
        return (_rewrite(data / "video-train.jsonl", data / f"video-{arm.data}-train.jsonl", only_task=task),
                _rewrite(data / "video-test.jsonl", data / f"video-{arm.data}-test.jsonl", only_task=task))
    train, test = data / "train.jsonl", data / "test.jsonl"
    task = next((o.split("=", 1)[1] for o in arm.overrides if o.startswith("task=")), None)
    if task is not None:  # rows name their task; the arm's instruction replaces it in both files
        train = _rewrite(train, data / f"train-{task}.jsonl", task=task)
        test = _rewrite(test, data / f"test-{task}.jsonl", task=task)
    if arm.data_fraction < 1.0:
        train = _rewrite(train, train.with_name(f"{train.stem}-{int(100 * arm.data_fraction)}pct.jsonl"),
                         fraction=arm.data_fraction)
    return train, test


# ------------------------------------------------------------------ one arm
def pretrained_start(arm: Arm, log: Path) -> float | None:
    """Make sure the arm's pretrained preset exists (`rewarddance pretrain`, its own step, when it is neither
    committed nor cached) and return its pretraining minutes (its pretrain_report.json); None from scratch."""
    if arm.start != "pretrained" or arm.objective == "clip-bt":
        return None
    from ..models.presets import PresetNotBuiltError, preset_path

    try:
        path = preset_path(arm.model)
    except PresetNotBuiltError:
        run_step([*cli_command(), "pretrain", "--arch", arm.arch, "--size", arm.size, "progress=false"], log)
        path = preset_path(arm.model)
    report = path / "pretrain_report.json"
    if not report.exists():
        return None
    r = json.loads(report.read_text())
    total = r.get("total_minutes") or r.get("train_minutes") or 0.0
    if isinstance(r.get("stage_1"), dict):  # a preset pretrained in two stages
        total += r["stage_1"].get("total_minutes") or r["stage_1"].get("train_minutes") or 0.0
    return round(total, 1)


def arm_key(arm: Arm, s: StudySettings, data: Path) -> str:
    """Everything an arm's result depends on: the arm, the steps and batch, the data, the evaluation's dtype."""
    parts = [asdict(arm), s.steps, s.batch_size, str(data), EVAL_DTYPE]
    return key_of(parts)


def finished_row(arm: Arm, s: StudySettings, data: Path, out: Path) -> dict[str, Any] | None:
    """The arm's row from an earlier run of the same settings, else None."""
    return read_keyed(out / "arms" / arm.name / "row.json", arm_key(arm, s, data))


def run_arm(arm: Arm, s: StudySettings, data: Path, out: Path, log: Path) -> dict[str, Any]:
    """Train (resumable) and evaluate one arm; its results.json row, cached in OUT/arms/<name>/row.json
    with the arm's key. A row or a half-done run of other settings (same name) is started again."""
    folder = out / "arms" / arm.name
    key = arm_key(arm, s, data)
    if (row := finished_row(arm, s, data, out)) is not None:
        return row
    started = start_folder(folder, key)
    train, test = arm_files(arm, data)
    model = [] if arm.objective == "clip-bt" else [f"model={arm.model}"]
    clip = [f"clip_size={arm.size}"] if arm.objective == "clip-bt" else []
    pretrain = pretrained_start(arm, log)  # before training: its time is reported apart
    final = folder / "train" / "final"
    run_step([*cli_command(), "train", f"data={train}", f"output_dir={folder / 'train'}", f"objective={arm.objective}",
              f"max_steps={s.steps}", f"batch_size={s.batch_size}", f"seed={arm.seed}", "eval_steps=1000000000",
              # checkpoints along the way: an interrupted arm (the medium ones take an hour here) resumes mid-run
              f"save_steps={max(1, s.steps // 8)}",
              "progress=false", "tensorboard=false", *model, *clip, *arm.overrides], log)
    result = eval_step(final, test, folder / "eval.json", log)
    splits = result.get("splits", {})
    steps = MetricsLog.read(folder / "train")
    training = read_checkpoint_config(final).training  # the run's own minutes, summed over resumes
    row = {"name": arm.name, "group": arm.group, "objective": arm.objective, "size": arm.size, "arch": arm.arch,
           "start": arm.start, "context": arm.context, "seed": arm.seed, "data": arm.data,
           "data_fraction": arm.data_fraction,
           "id_accuracy": splits.get("id", {}).get("accuracy", result["overall"].get("accuracy")),
           "ood_accuracy": splits.get("ood", {}).get("accuracy"),
           "accuracy": result["overall"].get("accuracy"), "n_test": result["overall"].get("n"),
           "train_minutes": training["minutes"], "train_steps": training["step"], "pretrain_minutes": pretrain,
           "curve": [{"step": r["step"], "loss": r.get("loss")} for r in steps], "key": key}
    write_json(folder / "row.json", row)
    started.unlink()
    return row


# ------------------------------------------------------------------ reference quality (paper Table 8's point)
REFERENCE_CHOICES = ("best-of-n", "random", "checker-best")
REFERENCE_JUDGE = "paradigm-generative-pairwise"  # the arm whose judge the reference-quality table measures


def candidate_settings(s: StudySettings) -> dict[str, Any]:
    """The settings the reference-quality candidates depend on (not the arms', seeds' or fractions'), the
    generator's weights included (a generator directory retrained in place draws other candidates)."""
    from ..generators import generator_path
    from ..models.checkpoint import weights_file_digest

    return {"generator": s.generator, "generator_weights": weights_file_digest(generator_path(s.generator),
                                                                               recursive=True),
            "prompts_per_category": s.ref_prompts_per_category, "pool": s.ref_pool, "ranked": s.ref_ranked}


def reference_candidates(s: StudySettings, folder: Path) -> tuple[Path, Path]:
    """(pool.jsonl, ranked.jsonl) in `folder`: for held-out compositional prompts, `s.ref_pool` samples of the
    committed generator to choose each prompt's reference from, and `s.ref_ranked` other samples to rank. Rows
    are `{"id", "prompt", "image", "checker_score"}` (the fraction of the prompt's constraints that hold).
    Cached under `candidate_settings`: a retrained judge or other arms reuse them."""
    import torch

    from ..generators import generator_path, load_generator
    from ..media import to_pil
    from ..world.generation import COMPOSITIONAL, checker_metric, heldout_prompts

    pool, ranked = folder / "pool.jsonl", folder / "ranked.jsonl"
    key = key_of(candidate_settings(s))
    if read_keyed(folder / "done.json", key) is not None:
        return pool, ranked
    started = start_folder(folder, key)
    prompts = [p for ps in heldout_prompts(COMPOSITIONAL, s.ref_prompts_per_category, seed=777).values() for p in ps]
    gen = load_generator(generator_path(s.generator))
    n = s.ref_pool + s.ref_ranked
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {"pool": [], "ranked": []}
    for i, prompt in enumerate(prompts):
        with torch.no_grad():  # seeds fixed by the prompt's index: the same candidates on every run
            images = gen.sample([prompt] * n, seeds=[50_000 + i * n + j for j in range(n)]).images
        _, scores = checker_metric(images, [prompt] * n)
        for j, (image, score) in enumerate(zip(images, scores)):
            name = f"images/{i:03d}-{j}.png"
            to_pil(image).save(folder / name)
            rows["pool" if j < s.ref_pool else "ranked"].append(
                {"id": f"{i:03d}-{j}", "prompt": prompt, "image": name, "checker_score": score})
    for path, part in ((pool, rows["pool"]), (ranked, rows["ranked"])):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in part))
    write_json(folder / "done.json", {"key": key, "prompts": len(prompts)})  # last: the candidates are complete
    started.unlink()
    return pool, ranked


def ranking_accuracy(rewards: list[float], truth: list[float], prompts: list[str]) -> tuple[float | None, int]:
    """(accuracy, pairs): over pairs of candidates of the same prompt whose checker scores differ, how often the
    judge's reward puts the better one first (a tie in reward counts half)."""
    hits, pairs = 0.0, 0
    for i in range(len(rewards)):
        for j in range(i + 1, len(rewards)):
            if prompts[i] != prompts[j] or truth[i] == truth[j]:
                continue
            pairs += 1
            better, worse = (i, j) if truth[i] > truth[j] else (j, i)
            hits += 1.0 if rewards[better] > rewards[worse] else 0.5 if rewards[better] == rewards[worse] else 0.0
    return (hits / pairs if pairs else None), pairs


def reference_key(judge: dict[str, Any], s: StudySettings) -> str:
    """What the reference-quality table depends on: the judge arm's key and the candidates' settings."""
    return key_of([judge["key"], candidate_settings(s)])


def finished_reference(judge: dict[str, Any], s: StudySettings, out: Path) -> dict[str, Any] | None:
    """The reference-quality table of an earlier run for this judge and these settings, else None."""
    return read_keyed(out / "reference-quality" / "result.json", reference_key(judge, s))


def run_reference_quality(judge: dict[str, Any], s: StudySettings, out: Path, log: Path) -> dict[str, Any]:
    """The pairwise judge `judge` (a finished arm's row) ranks each held-out prompt's candidates by P(candidate
    beats the reference), the reference chosen three ways from the same pool: Best-of-N win counts under the
    judge (`rewarddance references`), a random pool sample, and the pool sample the checker scores best (what
    a perfect choice would give). Candidates are scored by `rewarddance score`. Cached under the judge's key."""
    import numpy as np

    folder = out / "reference-quality"
    key = reference_key(judge, s)
    if (done := finished_reference(judge, s, out)) is not None:
        return done
    started = start_folder(folder, key)
    model = str(out / "arms" / judge["name"] / "train" / "final")
    candidates = out / "reference-candidates"
    pool_file, ranked_file = reference_candidates(s, candidates)
    pool = [json.loads(t) for t in pool_file.read_text().splitlines()]
    ranked = [json.loads(t) for t in ranked_file.read_text().splitlines()]
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in pool:
        by_prompt.setdefault(row["prompt"], []).append(row)

    bon_file = folder / "references-best-of-n.jsonl"
    if not bon_file.exists():
        run_step([*cli_command(), "references", "--model", model, "--input", str(pool_file), "--out", str(bon_file)],
                 log)
    rng = np.random.default_rng(0)
    chosen = {"best-of-n": {r["prompt"]: r["candidate"] for r in map(json.loads, bon_file.read_text().splitlines())},
              "random": {p: rows[int(rng.integers(len(rows)))]["id"] for p, rows in by_prompt.items()},
              "checker-best": {p: max(rows, key=lambda r: r["checker_score"])["id"] for p, rows in by_prompt.items()}}
    pool_by_id = {r["id"]: r for r in pool}
    refs = {c: {p: pool_by_id[i] for p, i in chosen[c].items()} for c in REFERENCE_CHOICES}
    rows_file, scores_file = folder / "rank.jsonl", folder / "scores.jsonl"  # one scoring run for every choice

    def here(image: str) -> str:  # a candidate's image, relative to rank.jsonl as manifests' paths are
        return os.path.relpath(candidates / image, folder)
    atomic_write_text(rows_file, "".join(json.dumps({"id": f"{c}/{r['id']}", "prompt": r["prompt"],
                                                     "image": here(r["image"]),
                                                     "reference": here(refs[c][r["prompt"]]["image"])}) + "\n"
                                         for c in REFERENCE_CHOICES for r in ranked))
    run_step([*cli_command(), "score", "--model", model, "--input", str(rows_file), "--output", str(scores_file)], log)
    # `score` exits non-zero when any row fails, and run_step raises: every row here has its reward
    reward = {r["id"]: r["reward"] for r in map(json.loads, scores_file.read_text().splitlines())}
    choices = {}
    for c in REFERENCE_CHOICES:
        acc, pairs = ranking_accuracy([reward[f"{c}/{r['id']}"] for r in ranked], [r["checker_score"] for r in ranked],
                                      [r["prompt"] for r in ranked])
        choices[c] = {"ranking_accuracy": acc, "pairs": pairs,
                      "reference_checker_score": float(np.mean([r["checker_score"] for r in refs[c].values()])),
                      "reference_pass_rate": float(np.mean([r["checker_score"] == 1.0 for r in refs[c].values()]))}
    result = {"judge": judge["name"], "prompts": len(by_prompt), "pool": s.ref_pool, "ranked": s.ref_ranked,
              "generator": s.generator, "choices": choices, "key": key}
    write_json(folder / "result.json", result)
    started.unlink()
    return result


# ------------------------------------------------------------------ the study
def study_rm(out: str | Path, *, quick: bool = False, settings: StudySettings | None = None,
             arms: list[Arm] | None = None, only: set[str] | None = None, command: str | None = None
             ) -> dict[str, Any]:
    """Run (or resume) the study (or `arms` of it, for probes that name their `command`); returns
    results.json's content. With `only` (arm names), the other arms are not run: their finished rows stay in
    the table, unfinished ones are left out.

        >>> study_rm("runs/study-rm-quick", quick=True)["arms"][0]["id_accuracy"]  # doctest: +SKIP
        0.55
    """
    s = settings or (QUICK if quick else FULL)
    todo = arms if arms is not None else arms_for(s)
    if only is not None:
        if not only:
            raise ValueError("--arms: name at least one arm")
        if unknown := only - {a.name for a in todo}:
            raise ValueError(f"--arms: no arm named {', '.join(sorted(unknown))} in this study")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "study.log"
    t0 = time.perf_counter()
    data = prepare_data(s, log)
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] | None = None

    def write() -> dict[str, Any]:
        """results.json / results.md with the arms finished so far (an interrupted study leaves a table)."""
        result = {"arms": rows, "reference_quality": reference, "settings": asdict(s), "data": str(data),
                  "minutes_this_run": round((time.perf_counter() - t0) / 60, 1),
                  "command": command or "rewarddance study rm" + (" --quick" if quick else "") + f" --out {out}"}
        write_json(out / "results.json", result)
        atomic_write_text(out / "results.md", markdown(result) + "\n")
        return result

    for arm in todo:
        if only is None or arm.name in only:
            row = run_arm(arm, s, data, out, log)
            print(f"[{arm.name}] ID {pct(row['id_accuracy'])} OOD {pct(row['ood_accuracy'])} "
                  f"({row['train_minutes']:.1f} min)", file=sys.stderr, flush=True)
        elif (row := finished_row(arm, s, data, out)) is None:
            continue
        rows.append(row)
        result = write()
        if arm.name == REFERENCE_JUDGE:  # this judge also ranks generator samples against references
            selected = only is None or arm.name in only
            reference = run_reference_quality(row, s, out, log) if selected else finished_reference(row, s, out)
            result = write()
    if rows:
        plot(result, out)
        return result
    return write()


def seed_spread(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float, int]]:
    """objective -> (mean, std, n) of OOD accuracy over the headline arms' seeds (paradigm + seeds groups)."""
    import numpy as np

    out = {}
    for o in ("generative-pairwise", "regressive-bt", "clip-bt"):
        vals = [r["ood_accuracy"] for r in rows if r["objective"] == o and r["group"] in ("paradigm", "seeds")
                and r["ood_accuracy"] is not None]
        if len(vals) > 1:
            out[o] = (float(np.mean(vals)), float(np.std(vals, ddof=1)), len(vals))
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = result["arms"]
    lines = [f"`{result['command']}`: {len(rows)} arms, {result['settings']['steps']} steps x batch "
             f"{result['settings']['batch_size']} each.", "",
             "| arm | table | objective | arch | size | start | context | seed | ID | OOD | train min | "
             "pretrain min |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['group']} | {r['objective']} | {r['arch']} | {r['size']} | {r['start']} | "
                     f"{r['context']} | {r['seed']} | {pct(r['id_accuracy'])} | {pct(r['ood_accuracy'])} | "
                     f"{r['train_minutes']:.1f} | {'' if r['pretrain_minutes'] is None else r['pretrain_minutes']} |")
    spread = seed_spread(rows)
    if spread:
        lines += ["", "OOD accuracy over seeds (mean ± std, n):"]
        lines += [f"- {o}: {100 * m:.1f}% ± {100 * sd:.1f} ({n})" for o, (m, sd, n) in spread.items()]
    ref = result.get("reference_quality")
    if ref:
        lines += ["", f"Reference quality: `{ref['judge']}` ranks {ref['ranked']} generator samples per held-out "
                  f"prompt ({ref['prompts']} prompts) by P(sample beats the reference), the reference picked from "
                  f"{ref['pool']} other samples. Ranking accuracy = share of same-prompt pairs with different checker "
                  "scores that the judge orders right.", "",
                  "| reference | ranking accuracy | pairs | reference checker score | reference pass rate |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c} | {pct(v['ranking_accuracy'])} | {v['pairs']} | {v['reference_checker_score']:.2f} | "
                  f"{pct(v['reference_pass_rate'])} |" for c, v in ref["choices"].items()]
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> None:
    """accuracy-vs-size.png, paradigms.png (ID vs OOD per paradigm), curves.png (training loss per arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["arms"]
    order = ["tiny", "small", "medium", "base"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for start, marker in (("pretrained", "o"), ("scratch", "s")):
        pts = sorted(((order.index(r["size"]), r["ood_accuracy"]) for r in rows
                      if r["objective"] == "generative-pairwise" and r["arch"] == "qwen2_5_vl" and r["start"] == start
                      and r["group"] in ("paradigm", "size") and r["size"] in order), key=lambda p: p[0])
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"OOD, {start}")
    ax.set_xticks(range(len(order)), order)
    ax.set_ylabel("accuracy")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    if ax.get_legend_handles_labels()[0]:  # a table without pairwise size arms has no line to name
        ax.legend(fontsize=8)
    ax.set_title("generative-pairwise judge vs size")
    fig.tight_layout()
    fig.savefig(out / "accuracy-vs-size.png", dpi=100)
    plt.close(fig)

    paradigm = [r for r in rows if r["group"] == "paradigm"]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    xs = range(len(paradigm))
    ax.bar([x - 0.2 for x in xs], [r["id_accuracy"] or 0 for r in paradigm], width=0.4, label="ID")
    ax.bar([x + 0.2 for x in xs], [r["ood_accuracy"] or 0 for r in paradigm], width=0.4, label="OOD")
    ax.set_xticks(list(xs), [r["objective"] for r in paradigm], rotation=15, fontsize=8)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "paradigms.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        pts = [(p["step"], p["loss"]) for p in r["curve"] if p.get("loss") is not None]
        if pts:
            ax.plot(*zip(*pts), label=r["name"], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
