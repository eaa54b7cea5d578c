"""References by Best-of-N win counts (method.md §2-3: the paper's reference selection).

For one prompt, its N candidate images are compared all-pairs with the judge (both orders, so
position bias cancels); the candidate that wins the most comparisons becomes the prompt's
reference, ties broken by total win probability.

Example:
    >>> import rewarddance as rd
    >>> from rewarddance.evaluate.references import best_of_n
    >>> pick = best_of_n(rd.load("judge/final"), "a red circle", ["c0.png", "c1.png", "c2.png"])  # doctest: +SKIP
    >>> pick.index, pick.wins                                                                   # doctest: +SKIP
    (2, 2.0)
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from ..data.records import RecordError, read_jsonl
from ..media import MediaError, load_image
from ..models.reward_model import RewardModel
from .scoring import ROW_ERRORS


@dataclass
class Selection:
    index: int               # the winner among the candidates
    wins: float              # its win count (a comparison at exactly 0.5 counts half to each side)
    win_probability: float   # its summed P(beats the other), the tie-breaker
    runner_up: int | None    # the second best, None with one candidate
    order: list[int]         # all candidates, best first


def win_counts(win: torch.Tensor) -> torch.Tensor:
    """Wins per candidate from an n×n matrix of P(i beats j): i wins a comparison when P > 0.5."""
    beats = (win > 0.5).double() + 0.5 * (win == 0.5).double()
    beats.fill_diagonal_(0.0)
    return beats.sum(dim=1)


def select(win: torch.Tensor) -> Selection:
    """The Best-of-N choice from a win-probability matrix: most wins, then most total win probability."""
    n = win.shape[0]
    wins = win_counts(win)
    prob = (win.sum(dim=1) - win.diagonal()).tolist()
    order = sorted(range(n), key=lambda i: (-wins[i].item(), -prob[i], i))
    return Selection(order[0], wins[order[0]].item(), prob[order[0]], order[1] if n > 1 else None, order)


def best_of_n(rm: RewardModel, prompt: str, images: Sequence[Any], *, task: str | None = None,
              batch_size: int = 16) -> Selection:
    """The reference for `prompt` among `images` (paths, PIL images, arrays or tensors) by Best-of-N
    win counts under `rm`. Used by `rewarddance references` and the RL recipes."""
    if not len(images):
        raise ValueError(f"prompt {prompt!r}: no candidates to choose a reference from")
    with torch.inference_mode():
        return select(rm.win_matrix(prompt, list(images), task=task, batch_size=batch_size))


def generator_references(gen: Any, rm: RewardModel, prompts: Sequence[str], *, n: int = 4, seed: int = 0,
                         num_steps: int = 20, guidance_scale: float = 3.0, task: str | None = None,
                         indices: Sequence[int] | None = None, progress: bool = False) -> dict[int, torch.Tensor]:
    """References drawn from a generator (a `rewarddance.generators.Generator`): for each prompt (or the
    prompts at `indices`, a data-parallel rank's share), `n` samples from seeds fixed by (seed, prompt
    index), and the Best-of-N pick by win counts under `rm`. Returns index -> 3×H×W image in [0, 1].
    The RL recipes compute these once, from the STARTING generator."""
    out: dict[int, torch.Tensor] = {}
    todo = list(range(len(prompts)) if indices is None else indices)
    for i in tqdm(todo, desc="references (Best-of-N)", unit="prompt", file=sys.stderr, disable=not progress):
        seeds = [10_000_000 + seed * 100_003 + i * n + j for j in range(n)]
        with torch.no_grad():
            images = gen.sample([prompts[i]] * n, seeds=seeds, num_steps=num_steps,
                                guidance_scale=guidance_scale).images
        out[i] = images[best_of_n(rm, prompts[i], list(images), task=task).index]
    return out


def select_references(rm: RewardModel, input: str | os.PathLike, output: str | os.PathLike, *,
                      n: int | None = None, task: str | None = None, batch_size: int = 16, strict: bool = False,
                      progress: bool = True) -> tuple[int, int]:
    """Read candidate rows (`{"prompt", "image"}`, optional `id`; several per prompt), choose each
    prompt's reference among its first `n` candidates (all when None), write reference rows
    (`id`, `prompt`, `image`, `n_candidates`, `wins`, `runner_up`, and `candidate`: the winner's id
    or row) to `output`. Bad rows and unreadable images are reported and skipped (with `strict`,
    the first one stops the job). Returns (prompts done, rows skipped)."""
    input, output = Path(input), Path(output)
    if not input.exists():
        raise FileNotFoundError(f"{input}: candidates file not found")
    # rows by prompt; images are loaded one prompt at a time, so memory holds one group, not the file
    groups: dict[str, list[tuple[int, str, Path]]] = {}
    skipped = 0

    def skip(message: str) -> None:
        nonlocal skipped
        skipped += 1
        print(f"skipped: {message}", file=sys.stderr)
        if strict:
            raise ValueError(f"{message} (--strict)")

    for item in read_jsonl(input):
        if isinstance(item, RecordError):
            skip(str(item))
            continue
        line, row = item
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip() \
                or not isinstance(row.get("image"), str):
            skip(f"{input}:{line}: a candidate row needs a non-empty 'prompt' and an 'image' path")
            continue
        path = Path(row["image"])
        groups.setdefault(row["prompt"].strip(), []).append(
            (line, str(row.get("id", f"line {line}")), path if path.is_absolute() else input.parent / path))

    def load_group(rows: list[tuple[int, str, Path]]) -> list[tuple[str, Any, Path]]:
        """The first `n` candidates whose images load (an unreadable one is skipped, not counted;
        rows past the first `n` are still read, so every unreadable image is reported)."""
        cands = []
        for line, cid, path in rows:
            try:
                image = load_image(path)
            except MediaError as e:
                skip(f"{input}:{line}: {e}")
                continue
            if n is None or len(cands) < n:
                cands.append((cid, image, path))
        return cands

    def pick_among(prompt: str, cands: list[tuple[str, Any, Path]]) -> tuple[list[tuple[str, Any, Path]], Any]:
        """(the candidates picked among, the pick or None); when the group fails, each candidate is tried
        alone (against itself), the ones that fail are reported and skipped, and the rest picked among."""
        if not cands:
            return cands, None
        try:
            return cands, best_of_n(rm, prompt, [image for _, image, _ in cands], task=task, batch_size=batch_size)
        except ROW_ERRORS:
            pass
        ok = []
        for cand in cands:
            try:
                best_of_n(rm, prompt, [cand[1], cand[1]], task=task, batch_size=batch_size)
                ok.append(cand)
            except ROW_ERRORS as e:
                skip(f"{input}: {cand[2]} (candidate {cand[0]} of {prompt!r}): {type(e).__name__}: {e}")
        if not ok:
            return ok, None
        return ok, best_of_n(rm, prompt, [image for _, image, _ in ok], task=task, batch_size=batch_size)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    done = 0
    try:  # a --strict stop or an interrupt leaves no half-written file behind
        with tmp.open("w") as out:
            for prompt, rows in tqdm(groups.items(), desc="references", unit="prompt", disable=not progress,
                                     file=sys.stderr):
                cands, pick = pick_among(prompt, load_group(rows))
                if pick is None:
                    continue
                cid, _, path = cands[pick.index]
                out.write(json.dumps({
                    "id": f"ref-{done:06d}", "prompt": prompt, "image": os.path.relpath(path, output.parent),
                    "n_candidates": len(cands), "wins": pick.wins, "win_probability": round(pick.win_probability, 6),
                    "candidate": cid, "runner_up": None if pick.runner_up is None else cands[pick.runner_up][0],
                }) + "\n")
                done += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
    return done, skipped
