"""A small bundled example: ShapeWorld images and a manifest, so a fresh install has something to score.

`make_example(out)` regenerates it (the committed files were made with it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EXAMPLE_DIR = Path(__file__).parent / "shapes"


def make_example(out: str | Path = EXAMPLE_DIR, seed: int = 0) -> Path:
    """Write 4 prompts × (one image that follows the prompt, one that does not) and manifest.jsonl."""
    from ..world.dataset import make_sample
    from ..world.render import Style
    from ..world.scene import parse_prompt

    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prompts = ["a red circle", "two green stars", "a blue square to the left of a yellow triangle",
               "a purple ring and an orange cross"]
    rows = []
    for i, prompt in enumerate(prompts):
        spec = parse_prompt(prompt)
        good = make_sample(rng, spec, Style(), 64, positive=True, defect_prob=0.0)
        bad = make_sample(rng, spec, Style(), 64, positive=False, defect_prob=0.0)
        for tag, s in (("good", good), ("bad", bad)):
            s.image.save(out / "img" / f"{i}_{tag}.png")
        rows.append({"id": f"{i}-pair", "task": "t2i-alignment", "prompt": prompt, "image_a": f"img/{i}_bad.png",
                     "image_b": f"img/{i}_good.png", "label": "b"})
        rows.append({"id": f"{i}-good", "task": "t2i-alignment", "prompt": prompt, "image": f"img/{i}_good.png",
                     "label": "yes"})
        rows.append({"id": f"{i}-bad", "task": "t2i-alignment", "prompt": prompt, "image": f"img/{i}_bad.png",
                     "label": "no"})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
