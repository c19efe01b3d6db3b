#!/usr/bin/env bash
# What a user with one GPU runs first (about 5-10 minutes; needs the network once, to download
# Qwen2.5-0.5B-Instruct). It checks the GPU path end to end before any long run:
#   1. the tiny world on CUDA: a short SFT, then two LANPO steps (float32, as on the CPU);
#   2. the one-GPU preset: `sft.py --preset qwen` bootstrapping from 16 GSM8K problems and two
#      SFT steps, then two LANPO steps of `train.py --preset qwen` (bf16 autocast over float32
#      weights, gradient checkpointing, 4096-token log-prob micro-batches).
# For each RL run it prints seconds per step (and per phase) and the peak GPU memory.
#
#   bash experiments/gpu_smoke.sh [cuda device, default cuda]
#
# Every output goes under runs/smoke/ (overwritten). Nothing here runs in the test suite: the
# tests are CPU-only. If a step runs out of memory, the error names the flag to lower.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${1:-cuda}"
OUT=runs/smoke

python - "$DEVICE" <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_smoke: torch sees no CUDA device (torch %s); install a CUDA build" % torch.__version__)
d = torch.device(sys.argv[1])
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(d)}, "
      f"{torch.cuda.get_device_properties(d).total_memory / 2**30:.0f} GiB, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
EOF

report() {   # seconds per step and peak memory, from a run's metrics.jsonl
  python - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"reward"' in l]
for r in rows:
    phases = ", ".join(f"{k[2:]} {v:.1f}" for k, v in r.items() if k.startswith("t_"))
    print(f"  step {r['step']}: {sum(v for k, v in r.items() if k.startswith('t_')):.1f} s "
          f"({phases}); peak GPU memory {r.get('peak_gpu_gib', float('nan')):.2f} GiB; "
          f"reward {r['reward']:.2f}; skipped update: {r['skipped_update']}")
EOF
}

echo "== 1. tiny world on $DEVICE"
python sft.py --out $OUT/tiny-sft --overwrite --device "$DEVICE" --steps 100 --examples 4000
python train.py --init $OUT/tiny-sft --run-dir $OUT/tiny-rl --overwrite --device "$DEVICE" \
  --steps 2 --eval-every 0 --no-final-eval
report $OUT/tiny-rl

echo "== 2. --preset qwen on $DEVICE"
python sft.py --preset qwen --out $OUT/qwen-sft --overwrite --device "$DEVICE" \
  --bootstrap-problems 16 --steps 2 --eval-limit 8
python train.py --preset qwen --init $OUT/qwen-sft --run-dir $OUT/qwen-rl --overwrite \
  --device "$DEVICE" --steps 2 --eval-every 0 --eval-limit 8
report $OUT/qwen-rl
echo "gpu_smoke: done. The real run: see README, 'One GPU'."
