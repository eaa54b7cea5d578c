"""Rewards for videos: sub-sample the frames a judge sees, and score videos with an image judge.

A video generator's samples are B×F×3×H×W; a reward needs far fewer frames than a sampler makes
(the judge's cost grows with every frame). `subsample_frames` keeps `n` evenly spaced frames
(the first and the last among them when n >= 2); `video_reward` wraps a reward function so that a video judge
sees those frames as a video, and an image judge scores each of them and averages (a per-frame
reward, as text-to-video RL commonly uses with image reward models). Images (4-D) pass through.

    >>> import torch
    >>> subsample_frames(torch.arange(9.0).view(1, 9, 1, 1, 1), 3).flatten().tolist()
    [0.0, 4.0, 8.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def subsample_frames(videos: Tensor, n: int) -> Tensor:
    """`n` evenly spaced frames of B×F×3×H×W videos (first and last included; n = 1: the middle frame);
    all of them when F <= n."""
    f = videos.shape[1]
    if n < 1:
        raise ValueError(f"frames: need >= 1, got {n}")
    if f <= n:
        return videos
    idx = torch.linspace(0, f - 1, n).round().long() if n > 1 else torch.tensor([f // 2])
    return videos[:, idx.to(videos.device)]


def video_reward(reward: Callable[..., Tensor], frames: int, video_judge: bool) -> Callable[..., Tensor]:
    """`reward(images, prompts, references)` made to take videos: a video judge gets `frames` frames
    as a video; an image judge scores each of those frames (prompts repeated) and they are averaged.
    Gradients flow through either way."""
    def fn(images: Tensor, prompts: Sequence[str], references: Any = None) -> Tensor:
        if images.ndim != 5:
            return reward(images, prompts, references)
        clips = subsample_frames(images, frames)
        if video_judge:  # reference videos (pairwise judges) are sub-sampled the same way
            if isinstance(references, Tensor) and references.ndim == 5:
                references = subsample_frames(references, frames)
            elif references is not None:
                references = [subsample_frames(r.unsqueeze(0), frames)[0] if isinstance(r, Tensor) and r.ndim == 4
                              else r for r in references]
            return reward(clips, prompts, references)
        if references is not None:
            raise ValueError("an image judge scores video frames pointwise: pairwise references are not supported "
                             "(use a video judge, or a pointwise image judge)")
        b, n = clips.shape[:2]
        per_frame = reward(clips.flatten(0, 1), [p for p in prompts for _ in range(n)], None)
        return per_frame.view(b, n).mean(dim=1)

    return fn
