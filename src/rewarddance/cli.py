"""The `rewarddance` command: init-model, score, eval, references, serve, train, pretrain, data.

    rewarddance init-model --arch qwen2_5_vl --size tiny --out models/tiny
    rewarddance score --model models/tiny --prompt "a red circle" a.png b.png
    rewarddance score --model models/tiny --input pairs.jsonl --output scores.jsonl
    rewarddance eval --model runs/judge/final --data data/world/test.jsonl --json runs/eval.json
    rewarddance references --model runs/judge/final --input candidates.jsonl --out references.jsonl
    rewarddance serve --model runs/judge/final --port 8000
    rewarddance train data=data/world/train.jsonl eval_data=data/world/test.jsonl max_minutes=15
    rewarddance data world --out data/world --n 2000
    rewarddance data convert --from imagereward test.json --out data/imagereward

`score --input` and `eval` run data-parallel under torchrun:
    torchrun --standalone --nproc_per_node 2 -m rewarddance.cli eval --model M --data F --json OUT

Exit codes: 0 ok, 1 some rows or images failed, 2 usage error. User errors print one
line, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_ROWS_FAILED, EXIT_USAGE = 0, 1, 2


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


DTYPES = ("float32", "bfloat16", "float16")


def _load_model(spec: str, args: argparse.Namespace):
    import torch

    import rewarddance as rd

    overrides = {"layout": args.layout} if getattr(args, "layout", None) else {}
    dtype = getattr(args, "dtype", None)
    return rd.load(spec, dtype=getattr(torch, dtype) if dtype else None, **overrides)


# ------------------------------------------------------------------ init-model
def cmd_init_model(args: argparse.Namespace) -> int:
    from .models.presets import init_model

    _quiet_transformers()
    out = init_model(args.arch, args.size, args.out, layout=args.layout, task=args.task, seed=args.seed)
    n = _param_count(out)
    print(f"wrote {args.arch}-{args.size} ({n / 1e6:.2f}M parameters, {args.layout}) to {out}")
    return EXIT_OK


def _param_count(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                n = 1
                for d in st.get_slice(k).get_shape():
                    n *= d
                total += n
    return total


# ------------------------------------------------------------------ score
def cmd_score(args: argparse.Namespace) -> int:
    if bool(args.input) == bool(args.images):
        raise UsageError("give either images (with --prompt) or --input MANIFEST, not both/neither")
    if args.images and not args.prompt:
        raise UsageError("--prompt is required when scoring images")
    if args.input and not args.output:
        raise UsageError("--output is required with --input")
    _quiet_transformers()
    rm = _load_model(args.model, args)
    if args.input:
        from .evaluate import score_manifest

        if not Path(args.input).exists():
            raise UsageError(f"{args.input}: manifest not found")
        ok, failed = score_manifest(rm, args.input, args.output, task=args.task, strict=args.strict,
                                    batch_size=args.batch_size)
        print(f"scored {ok} rows, {failed} failed -> {args.output}", file=sys.stderr)
        return EXIT_ROWS_FAILED if failed else EXIT_OK
    return score_images(rm, args)


def score_images(rm, args: argparse.Namespace) -> int:
    """`rewarddance score IMG...`: one reward (or reward and reason) per image; an image that fails (does not
    load, or the processor refuses it) is reported with its path and the rest are scored."""
    import torch

    from .evaluate.scoring import ROW_ERRORS
    from .media import MediaError

    if rm.layout == "pairwise" and not args.reference:
        raise UsageError("this is a pairwise reward model: pass --reference IMAGE (the candidate is compared "
                         "with it)")
    rows, failed, task_obj = [], 0, None

    def fail(img: str, e: Exception) -> bool:
        """Report `img`'s error; whether to stop (--strict)."""
        nonlocal failed
        failed += 1
        print(f"error: {e}" if str(img) in str(e) else f"error: {img}: {type(e).__name__}: {e}", file=sys.stderr)
        return args.strict

    for img in args.images:
        try:
            task_obj, items = rm.load_items(args.prompt, [img], task=args.task,
                                            references=[args.reference] if args.reference else None)
        except (MediaError, ValueError) as e:
            if fail(img, e):
                return EXIT_ROWS_FAILED
            continue
        rows.append((img, items[0]))
    results = []  # (image, reward, reason or None)
    if args.explain:  # the judgment, then the reason generated after it
        for img, _ in rows:
            try:
                results.append((img, *rm.explain(args.prompt, img, reference=args.reference, task=args.task)))
            except ROW_ERRORS as e:
                if fail(img, e):
                    return EXIT_ROWS_FAILED
    elif rows:
        with torch.inference_mode():
            try:
                rewards = rm.score_items(task_obj, [item for _, item in rows], args.batch_size)
                results = [(img, r, None) for (img, _), r in zip(rows, rewards)]
            except ROW_ERRORS:  # one image failed the batch: score them one by one, so that only it fails
                for img, item in rows:
                    try:
                        results.append((img, rm.score_items(task_obj, [item], 1)[0], None))
                    except ROW_ERRORS as e:
                        if fail(img, e):
                            return EXIT_ROWS_FAILED
    if results:
        width = max(len(str(img)) for img, _, _ in results)
        print(f"{'image':<{width}}  reward" + ("  reason" if args.explain else ""))
        for img, reward, text in results:
            print(f"{str(img):<{width}}  {reward:.4f}" + (f"  {text}" if args.explain else ""))
    return EXIT_ROWS_FAILED if failed else EXIT_OK


# ------------------------------------------------------------------ eval, references
def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate.report import markdown_table
    from .recipes.evaluate_rm import StrictStop, evaluate

    _quiet_transformers()
    for path in args.data:
        if not Path(path).exists():
            raise UsageError(f"{path}: data file not found")
    rm = _load_model(args.model, args)
    try:
        result = evaluate(rm, args.data, format=args.format, images=args.images, json_out=args.json,
                          strict=args.strict, batch_size=args.batch_size, task=args.task,
                          calibration_split=args.calibration_split, model_name=args.model)
    except StrictStop as e:
        print(f"rewarddance eval: stopped: {e}", file=sys.stderr)
        return EXIT_ROWS_FAILED
    if result is None:  # a non-zero rank of a data-parallel run: rank 0 reports
        return EXIT_OK
    print(markdown_table(result))
    if args.json:
        print(f"wrote {args.json}, {Path(args.json).with_suffix('.md')}", file=sys.stderr)
    return EXIT_ROWS_FAILED if result.get("n_rows_failed") else EXIT_OK


def cmd_references(args: argparse.Namespace) -> int:
    from .evaluate.references import select_references

    _quiet_transformers()
    if not Path(args.input).exists():
        raise UsageError(f"{args.input}: candidates file not found")
    rm = _load_model(args.model, args)
    done, skipped = select_references(rm, args.input, args.out, n=args.n, task=args.task, strict=args.strict,
                                      batch_size=args.batch_size)
    print(f"chose references for {done} prompts ({skipped} rows skipped) -> {args.out}", file=sys.stderr)
    return EXIT_ROWS_FAILED if skipped else EXIT_OK


# ------------------------------------------------------------------ data
def cmd_data_convert(args: argparse.Namespace) -> int:
    from .data.benchmarks import convert

    if not Path(args.input).exists():
        raise UsageError(f"{args.input}: file not found")
    counts = convert(args.source, args.input, args.out, images=args.images)
    for path, n in counts.items():
        print(f"{n:7d}  {path}")
    return EXIT_OK


def cmd_data_world(args: argparse.Namespace) -> int:
    from .world.dataset import build_world

    counts = build_world(args.out, args.n, seed=args.seed, size=args.size, video=args.video,
                         label_noise=args.label_noise, n_test=args.n_test, n_video=args.n_video)
    for name, n in counts.items():  # build_world counts by file name
        print(f"{n:7d}  {Path(args.out) / name}")
    return EXIT_OK


# ------------------------------------------------------------------ train
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .recipes.train_rm import TrainConfig, train

    _quiet_transformers()
    train(load_config(TrainConfig, args.config, args.overrides))
    return EXIT_OK


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .recipes.pretrain import PretrainConfig, check_arch_size, pretrain

    _quiet_transformers()
    cfg = load_config(PretrainConfig, args.config, [f"arch={args.arch}", f"size={args.size}", *args.overrides])
    check_arch_size(cfg)
    pretrain(cfg)
    return EXIT_OK


def cmd_generator_pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .recipes.pretrain_generator import GeneratorPretrainConfig, command_line, pretrain_generator

    _quiet_transformers()
    cfg = load_config(GeneratorPretrainConfig, args.config, args.overrides)
    pretrain_generator(cfg, command=command_line(cfg, args.config, args.overrides))
    return EXIT_OK


# ------------------------------------------------------------------ rl
def cmd_rl_refl(args: argparse.Namespace) -> int:
    from .config import load_config
    from .recipes.refl import ReFLConfig, command_line, refl

    _quiet_transformers()
    cfg = load_config(ReFLConfig, args.config, args.overrides)
    refl(cfg, command=command_line(args.config, args.overrides))
    return EXIT_OK


def cmd_rl_grpo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .recipes.grpo import GRPOConfig, command_line, grpo

    _quiet_transformers()
    cfg = load_config(GRPOConfig, args.config, args.overrides)
    grpo(cfg, command=command_line(args.config, args.overrides))
    return EXIT_OK


def cmd_rl_search(args: argparse.Namespace) -> int:
    from .config import load_config
    from .recipes.search import SearchConfig, command_line, run_search

    _quiet_transformers()
    cfg = load_config(SearchConfig, args.config, args.overrides)
    run_search(cfg, args.rl_command, command=command_line(args.rl_command, args.config, args.overrides))
    return EXIT_OK


def cmd_study_rl(args: argparse.Namespace) -> int:
    from .recipes.study_rl import study_rl

    rms = {}
    for item in args.rm or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--rm {item!r}: give NAME=DIR (e.g. --rm generative=runs/judge/final)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):  # NAME names the arms' folders in OUT
            raise UsageError(f"--rm {item!r}: NAME may hold letters, digits, '_', '.', '-' only")
        if not Path(path).exists():
            raise UsageError(f"--rm {item!r}: {path} does not exist")
        rms[name] = path
    only = None if args.arms is None else {name.strip() for name in args.arms.split(",") if name.strip()}
    if only is not None and not only:
        raise UsageError("--arms: name at least one arm")
    study_rl(args.out, quick=args.quick, rms=rms or None, only=only)
    return EXIT_OK


def cmd_study_rm(args: argparse.Namespace) -> int:
    from .recipes.study_rm import markdown, study_rm

    only = None if args.arms is None else {name.strip() for name in args.arms.split(",") if name.strip()}
    print(markdown(study_rm(args.out, quick=args.quick, only=only)))
    return EXIT_OK


# ------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .recipes.demo import demo, load_demo_config

    _quiet_transformers()
    cfg = load_demo_config(args.quick, args.config, [*args.overrides, *([f"out={args.out}"] if args.out else [])])
    metrics = demo(cfg, quick=args.quick, force=args.force)
    print(f"\nreport: {metrics['report']}")
    for line in metrics["headline"]:
        print(f"  {line}")
    return EXIT_OK


# ------------------------------------------------------------------ serve
def cmd_serve(args: argparse.Namespace) -> int:
    from .models.presets import parse_preset_name
    from .serve import ServeConfig, read_api_keys

    try:
        from .serve import run_server
    except ModuleNotFoundError as e:
        raise UsageError(f"{e.name} is not installed: pip install 'rewarddance[serve]'") from None
    if not Path(args.model).exists() and parse_preset_name(args.model) is None:
        raise UsageError(f"{args.model}: no such model directory or preset")
    config = ServeConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                         queue_capacity=args.queue_capacity, request_timeout_s=args.request_timeout,
                         max_body_bytes=int(args.max_body_mb * 2**20), api_keys=read_api_keys(args.api_key_file))
    _quiet_transformers()
    import torch

    return run_server(args.model, host=args.host, port=args.port, dtype=getattr(torch, args.dtype) if args.dtype
                      else None, replicas=args.replicas, devices=args.devices.split(",") if args.devices else None,
                      config=config, log_level=args.log_level, **({"layout": args.layout} if args.layout else {}))


# ------------------------------------------------------------------ main
class UsageError(Exception):
    """Bad arguments: exit code 2."""


def recipe_parser(sub: Any, name: str, text: str, schema: type, func: Callable, keys_note: str = "") -> Any:
    """A recipe's subcommand: its keys listed in --help, `--config FILE` and `key=value` overrides."""
    from .config import describe

    q = sub.add_parser(name, help=text, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"keys (default, type{keys_note}):\n" + describe(schema))
    q.add_argument("--config", help="YAML file of settings (keys below); key=value arguments override it")
    q.add_argument("overrides", nargs="*", metavar="key=value")
    q.set_defaults(func=func)
    return q


def build_parser() -> argparse.ArgumentParser:
    from .context import LAYOUTS
    from .data.benchmarks import FORMATS as BENCHMARK_FORMATS
    from .models.presets import ARCHS, SIZES

    p = argparse.ArgumentParser(prog="rewarddance", description="Generative reward models for image/video generation")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("init-model", help="write a randomly initialised preset of a real VLM architecture")
    q.add_argument("--arch", required=True, choices=ARCHS)
    q.add_argument("--size", required=True, choices=SIZES)
    q.add_argument("--out", required=True)
    q.add_argument("--layout", default="pointwise", choices=LAYOUTS)
    q.add_argument("--task", default="t2i-alignment")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_init_model)

    q = sub.add_parser("score", help="score images, or a manifest of records")
    q.add_argument("--model", required=True, help="checkpoint directory or preset name (e.g. qwen2_vl-tiny)")
    q.add_argument("--task", default=None, help="built-in task name or a task .yaml (default: the model's)")
    q.add_argument("--layout", default=None, choices=LAYOUTS, help="override the checkpoint's layout")
    q.add_argument("--prompt")
    q.add_argument("--reference", help="reference image (pairwise models): reward = P(image beats reference)")
    q.add_argument("--input", help="manifest JSONL to score")
    q.add_argument("--output", help="scores JSONL (one row per input row; a re-run resumes)")
    q.add_argument("--strict", action="store_true", help="stop at the first bad row")
    q.add_argument("--explain", action="store_true",
                   help="also write each judgment's reason (generated after the judgment token; CoT-trained judges)")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("images", nargs="*")
    q.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: rewarddance.default_dtype)")
    q.set_defaults(func=cmd_score)

    q = sub.add_parser("eval", help="evaluate a reward model on preference data (manifests or public benchmarks)")
    q.add_argument("--model", required=True, help="checkpoint directory or preset name")
    q.add_argument("--data", required=True, action="append", help="data file (repeatable)")
    q.add_argument("--format", default=None, choices=BENCHMARK_FORMATS,
                   help="a public benchmark's format (default: detected from the file; JSONL manifests otherwise)")
    q.add_argument("--images", default=None, help="root folder of the benchmark's images (default: beside the file)")
    q.add_argument("--json", default=None, help="write the result here (+ .md table and -reliability.png beside it)")
    q.add_argument("--task", default=None, help="task for rows that name none (default: the model's)")
    q.add_argument("--layout", default=None, choices=LAYOUTS, help="override the checkpoint's layout")
    q.add_argument("--calibration-split", default=None,
                   help="benchmarks with a tie threshold: the split it is chosen on (reported on the others)")
    q.add_argument("--strict", action="store_true", help="stop at the first bad row")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: rewarddance.default_dtype)")
    q.set_defaults(func=cmd_eval)

    q = sub.add_parser("references", help="choose each prompt's reference by Best-of-N win counts")
    q.add_argument("--model", required=True, help="a (pairwise) judge: checkpoint directory or preset name")
    q.add_argument("--input", required=True, help='candidates JSONL: {"prompt", "image"[, "id"]}, several per prompt')
    q.add_argument("--out", required=True, help="references JSONL to write")
    q.add_argument("--n", type=int, default=None, help="use the first N candidates of each prompt (default: all)")
    q.add_argument("--task", default=None)
    q.add_argument("--layout", default=None, choices=LAYOUTS, help="override the checkpoint's layout")
    q.add_argument("--strict", action="store_true", help="stop at the first bad row")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: rewarddance.default_dtype)")
    q.set_defaults(func=cmd_references)

    from .recipes.train_rm import TrainConfig

    recipe_parser(sub, "train", "train a reward model (key=value overrides; see the keys below)", TrainConfig,
                  cmd_train)

    from .recipes.pretrain import PretrainConfig

    q = recipe_parser(sub, "pretrain", "pretrain <arch>-<size>-shapeworld (captions, content questions)",
                      PretrainConfig, cmd_pretrain)
    q.add_argument("--arch", required=True, choices=ARCHS)
    q.add_argument("--size", required=True, choices=SIZES)

    from .recipes.pretrain_generator import GeneratorPretrainConfig

    q = sub.add_parser("generator", help="text-to-image generators for RL (ShapeWorld)")
    gsub = q.add_subparsers(dest="generator_command", required=True)
    recipe_parser(gsub, "pretrain", "pretrain a ShapeWorld flow-matching generator on renders",
                  GeneratorPretrainConfig, cmd_generator_pretrain, keys_note="; model.<key> for the architecture")

    from .recipes.grpo import GRPOConfig
    from .recipes.refl import ReFLConfig
    from .recipes.search import SearchConfig

    q = sub.add_parser("rl", help="align a generator with a judge: ReFL, GRPO, Best-of-N, search over paths")
    rsub = q.add_subparsers(dest="rl_command", required=True)
    for name, schema, func, text in (
            ("refl", ReFLConfig, cmd_rl_refl, "fine-tune a generator with ReFL against a frozen judge"),
            ("grpo", GRPOConfig, cmd_rl_grpo, "fine-tune a generator with GRPO (Flow-GRPO) against judges"),
            ("best-of-n", SearchConfig, cmd_rl_search, "Best-of-N with a judge, gain measured by the ground truth"),
            ("search", SearchConfig, cmd_rl_search, "search over sampling paths vs Best-of-N at equal judge calls")):
        recipe_parser(rsub, name, text, schema, func)

    q = sub.add_parser("study", help="the project's studies (bench jobs, resumable)")
    ssub = q.add_subparsers(dest="study", required=True)
    st = ssub.add_parser("rl", help="ReFL against judges of different quality, Best-of-N and search, on ShapeWorld")
    st.add_argument("--out", required=True, help="output directory (results.json, results.md, one folder per arm)")
    st.add_argument("--quick", action="store_true", help="the <= 15-minute version (fewer steps and prompts)")
    st.add_argument("--rm", action="append", metavar="NAME=DIR",
                    help="use this judge instead of training the study's own (repeatable)")
    st.add_argument("--arms", default=None, metavar="NAME,NAME",
                    help="run only these arms (refl-<judge>, grpo-<judge>, search); the other arms' finished rows "
                         "stay in the table, unfinished ones are left out")
    st.set_defaults(func=cmd_study_rl)
    sm = ssub.add_parser("rm", help="the reward-model study: paradigms, sizes, context, data, video (Tables 2, 7-9)")
    sm.add_argument("--out", required=True, help="output directory (results.json, results.md, plots, arms/)")
    sm.add_argument("--quick", action="store_true", help="the <= 15-minute version (committed presets, 5 arms)")
    sm.add_argument("--arms", default=None, metavar="NAME,NAME",
                    help="run only these arms; the other arms' finished rows stay in the table, unfinished ones are "
                         "left out")
    sm.set_defaults(func=cmd_study_rm)

    from .recipes.demo import DemoConfig

    q = recipe_parser(sub, "demo", "the main job: train judges, evaluate, ReFL, Best-of-N / search, report.html",
                      DemoConfig, cmd_demo)
    q.add_argument("--out", help="output directory (default runs/demo)")
    q.add_argument("--quick", action="store_true", help="the <= 3-minute version (fewer pairs, steps, prompts)")
    q.add_argument("--force", action="store_true", help="redo every stage (a re-run otherwise skips finished ones)")

    from .serve.config import ServeConfig

    q = sub.add_parser("serve", help="serve a reward model over HTTP (pip install 'rewarddance[serve]')")
    q.add_argument("--model", required=True, help="checkpoint directory or preset name")
    q.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype (default: rewarddance.default_dtype)")
    q.add_argument("--layout", default=None, choices=LAYOUTS, help="override the checkpoint's layout")
    q.add_argument("--replicas", type=int, default=1, help="model copies behind one queue, one per device")
    q.add_argument("--devices", default=None, help="comma-separated devices the replicas take in turn "
                   "(default: every GPU, else cpu)")
    q.add_argument("--api-key-file", default=None, help="API keys, one per line (default: $REWARDDANCE_API_KEYS, "
                   "comma-separated; neither: no auth)")
    q.add_argument("--max-batch-size", type=int, default=ServeConfig.max_batch_size, help="items per model call")
    q.add_argument("--max-wait-ms", type=float, default=ServeConfig.max_wait_ms,
                   help="how long a request waits for others to share its batch")
    q.add_argument("--queue-capacity", type=int, default=ServeConfig.queue_capacity,
                   help="requests waiting; beyond it 503 with Retry-After")
    q.add_argument("--request-timeout", type=float, default=ServeConfig.request_timeout_s,
                   help="seconds before a request gets 504")
    q.add_argument("--max-body-mb", type=float, default=ServeConfig.max_body_bytes / 2**20,
                   help="request size limit in MiB (larger: 413)")
    q.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    q.set_defaults(func=cmd_serve)

    q = sub.add_parser("data", help="build datasets")
    dsub = q.add_subparsers(dest="dataset", required=True)
    w = dsub.add_parser("world", help="ShapeWorld preference, pointwise, reference and pretraining data")
    w.add_argument("--out", required=True)
    w.add_argument("--n", type=int, default=2000, help="training pairs")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--size", type=int, default=64)
    w.add_argument("--label-noise", type=float, default=0.1)
    w.add_argument("--video", action="store_true", help="also write video-train/test.jsonl")
    w.add_argument("--n-test", type=int, default=None, help="held-out pairs (default max(400, n/5))")
    w.add_argument("--n-video", type=int, default=None, help="video training pairs (default max(40, n/10))")
    w.set_defaults(func=cmd_data_world)
    c = dsub.add_parser("convert", help="a public benchmark's file -> this project's manifests")
    c.add_argument("--from", dest="source", default=None, choices=BENCHMARK_FORMATS,
                   help="its format (default: detected from the file)")
    c.add_argument("input")
    c.add_argument("--out", required=True)
    c.add_argument("--images", default=None, help="root folder of its images (default: beside the file)")
    c.set_defaults(func=cmd_data_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import RecordError
    from .media import MediaError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # a command run under torchrun may have joined a process group
            from .evaluate.scoring import close_distributed

            close_distributed()  # not after an exception: that rank exits, and torchrun stops the others
        return code
    except UsageError as e:
        print(f"rewarddance {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (MediaError, RecordError, ValueError, FileNotFoundError, OSError) as e:  # ConfigError is a ValueError
        # bad input, one line; a ValueError from deeper down (a bug) looks the same, so
        # REWARDDANCE_DEBUG=1 prints where it came from
        if os.environ.get("REWARDDANCE_DEBUG"):
            traceback.print_exc()
        print(f"rewarddance {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; finished rows are kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
