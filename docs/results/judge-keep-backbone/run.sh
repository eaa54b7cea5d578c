#!/bin/bash
# Does judge fine-tuning destroy the pretrained preset's skills (its QA loss goes 0.22 -> 5.5-7.0 at lr 1e-3)?
# Two judges that keep more of the backbone: lr 1e-4 with the vision encoder frozen, and LoRA (lr 1e-3).
D=/root/.cache/rewarddance/study-rm/world-4000-800-400
cd /work/main
run() {
  out=runs/forget/$1; shift
  OMP_NUM_THREADS=2 .venv/bin/rewarddance train data=$D/train.jsonl eval_data=$D/test-200.jsonl output_dir=$out \
    model=qwen2_5_vl-tiny-shapeworld max_steps=800 batch_size=16 eval_steps=200 progress=false tensorboard=false "$@" \
    >> runs/forget/log 2>&1
}
run freeze-lr1e-4 lr=1e-4 freeze_vision=true
run lora-lr1e-3 lr=1e-3 lora=true
