#!/bin/bash
# Can the tiny pretrained pairwise judge fit 500 training pairs (19 epochs in 600 steps)? Two learning rates.
D=/root/.cache/rewarddance/study-rm/world-4000-800-400
cd /work/main
for lr in 1e-3 1e-4; do
  out=runs/probe-epochs/lr$lr
  OMP_NUM_THREADS=2 .venv/bin/rewarddance train data=$D/train-500.jsonl output_dir=$out model=qwen2_5_vl-tiny-shapeworld \
    max_steps=600 batch_size=16 lr=$lr eval_steps=1000000000 progress=false tensorboard=false >> runs/probe-epochs/log 2>&1
  OMP_NUM_THREADS=2 .venv/bin/rewarddance eval --model $out/final --data $D/test.jsonl --json $out/eval.json >> runs/probe-epochs/log 2>&1
done
