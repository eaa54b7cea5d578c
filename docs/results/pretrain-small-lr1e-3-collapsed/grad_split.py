"""Gradient norms of a VLM checkpoint's vision tower, merger, embeddings and LM on 8 pretraining rows."""
import itertools
import sys
from pathlib import Path

import torch

from rewarddance.data import RecordError
from rewarddance.data.training import Batch, make_pretrain_example, read_pretrain
from rewarddance.models.judge import Judge
from rewarddance.train.forward import sequence_scores

torch.set_num_threads(1)
for path in sys.argv[2:]:
    j = Judge.from_pretrained(path)
    j.train()
    rows = [r for r in itertools.islice(read_pretrain(Path(sys.argv[1])), 8) if not isinstance(r, RecordError)]
    b = Batch.join([make_pretrain_example(r) for r in rows])
    sc = sequence_scores(j, j, b.sequences)
    loss = sc.lm_nll[sc.lm_mask].mean()
    loss.backward()
    groups: dict = {}
    for n, p in j.named_parameters():
        if p.grad is not None:
            g = "merger" if "merger" in n else "visual" if "visual" in n else "embed" if "embed" in n else "lm"
            groups[g] = groups.get(g, 0.0) + p.grad.norm().item() ** 2
    print(path, f"loss {loss.item():.3f}", {k: f"{v ** .5:.2g}" for k, v in groups.items()}, flush=True)
