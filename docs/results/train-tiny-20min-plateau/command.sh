#!/bin/bash
# The default pairwise CoT judge from the tiny preset on all 4000 study pairs for 20 minutes of training (lr 1e-3):
# does it leave the ln 2 plateau, and does it generalise? Held-out accuracy on 200 test pairs every 250 steps.
D=/root/.cache/rewarddance/study-rm/world-4000-800-400
cd /work/main
out=runs/probe-epochs/long-4000
OMP_NUM_THREADS=2 .venv/bin/rewarddance train data=$D/train.jsonl eval_data=$D/test-200.jsonl output_dir=$out \
  model=qwen2_5_vl-tiny-shapeworld max_steps=2000 max_minutes=20 batch_size=16 lr=1e-3 eval_steps=250 \
  progress=false tensorboard=false >> runs/probe-epochs/long.log 2>&1
OMP_NUM_THREADS=2 .venv/bin/rewarddance eval --model $out/final --data $D/test.jsonl --json $out/eval.json >> runs/probe-epochs/long.log 2>&1
