#!/bin/bash
# The default judge (pairwise + CoT, lr 1e-3, 1,000 steps, from qwen2_5_vl-tiny-shapeworld) with the question
# AFTER the two images (task after.yaml; rows rewritten to name it), against bench/curriculum_probe.py's
# baseline (the same run with t2i-overall, question before the images).
# the rows of train.jsonl / test.jsonl rewritten with task=<absolute path of after.yaml> as train-qafter.jsonl /
# test-qafter.jsonl (the rows' task overrides the config's)
D=/root/.cache/rewarddance/study-rm/world-4000-800-400
out=runs/qafter/run
rewarddance train data=$D/train-qafter.jsonl eval_data=$D/test-qafter.jsonl output_dir=$out \
  max_steps=1000 eval_steps=100 eval_max=200 save_steps=100 progress=false tensorboard=false
rewarddance eval --model $out/final --data $D/test-qafter.jsonl --json runs/qafter/eval.json
