#!/bin/bash
# The small pretrained preset's judge at lr 3e-4 for 600 steps (3x session 9's 200): does it keep climbing?
# Data: the RM study's (rewarddance data world --n 4000 --n-test 800 --video --n-video 400) and 400 pairs by independent code.
D=/root/.cache/rewarddance/study-rm/world-4000-800-400
out=runs/small-judge-long
python bench/other_renderer.py --out runs/data/other --n 400 --seed 0
rewarddance train data=$D/train.jsonl eval_data=$D/test.jsonl output_dir=$out/run model=qwen2_5_vl-small-shapeworld \
  lr=3e-4 max_steps=600 max_minutes=40 eval_steps=100 eval_max=200 save_steps=100 progress=false tensorboard=false
rewarddance eval --model $out/run/final --data $D/test.jsonl --data runs/data/other/pairs.jsonl --json $out/eval.json
