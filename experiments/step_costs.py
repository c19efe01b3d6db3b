"""Where a step's time goes: the GRPO step and the LANPO step itemized, phase by phase, with the
tokens each phase processes.

Runs train.py's own `train_step` (nothing is reimplemented) on the tiny world from one SFT
model, GRPO (`--p-feedback 0`) and the paper's algorithm side by side, interleaved step by step
so that a shared machine's drift falls on both alike, and times the calls inside the step by
wrapping them (the project's code is unchanged):

  sampling      M.sample for the G rollouts per problem (prefill + decoding)
  summaries     M.sample for the lessons (LANPO's step 7; GRPO has none)
  ref log-probs M.token_logprobs under pi_ref, no grad (the KL term's beta > 0)
  old log-probs M.token_logprobs under pi_theta, no grad (only with several inner epochs or
                --score-context corrected; neither arm here has it)
  policy fwd    M.token_logprobs under pi_theta with grad
  backward      Tensor.backward of the loss
  optimizer     clip_grad_norm_ and AdamW's step
  other         the rest: problems, prompts, retrieval, reward, the pool, metrics

Tokens: a call's padded tokens (rows x its longest row), what the matrix multiplies see, and
the real ones (the prompt and response tokens of each row).

    python experiments/step_costs.py --init runs/tiny/sft --steps 20 [--threads 1 2] [--busy]

Writes experiments/results/step_costs.json; with --busy another process keeps one core busy
meanwhile, as in trl_compare.py (RESULTS' busy table: `--busy --out
experiments/results/step_costs_busy.json`). The first `--warmup` steps of each arm are left out
of the medians (allocator and caches warm up).
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train as T  # noqa: E402
from pool import Pool  # noqa: E402
from support import config, data  # noqa: E402
from support import controls as C  # noqa: E402
from support import model as M  # noqa: E402
from support import world as W  # noqa: E402

from tables import STEP_ITEMS as ITEMS  # noqa: E402  (the table's row order)
from trl_compare import busy  # noqa: E402  (the same busy machine as the TRL comparison)


class Meter:
    """Seconds and tokens per item, for the step being measured."""

    def __init__(self):
        self.ref = None   # the arm's pi_ref: token_logprobs under it are the KL term's
        self.reset()

    def reset(self):
        self.seconds, self.padded, self.real = (defaultdict(float), defaultdict(int),
                                                defaultdict(int))

    @contextmanager
    def time(self, item, padded=0, real=0):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[item] += time.perf_counter() - start
            self.padded[item] += padded
            self.real[item] += real


def instrument(meter):
    """Wrap the calls a step makes; returns a function that undoes the wrapping."""
    sample, logprobs = M.sample, M.token_logprobs
    backward, clip = torch.Tensor.backward, torch.nn.utils.clip_grad_norm_
    step = torch.optim.AdamW.step

    def timed_sample(model, tok, prompts, n=1, max_new_tokens=64, greedy=False, **kw):
        item = "summaries" if greedy else "sampling"   # rollouts are sampled, lessons greedy
        start = time.perf_counter()
        out = sample(model, tok, prompts, n=n, max_new_tokens=max_new_tokens, greedy=greedy,
                     **kw)
        meter.seconds[item] += time.perf_counter() - start
        lengths = [len(r) for r in out.prompt_ids]
        generated = out.response_mask.sum(1).tolist()
        meter.padded[item] += len(lengths) * (max(lengths) + out.decode_steps)
        meter.real[item] += sum(lengths) + int(sum(generated))
        return out

    def timed_logprobs(model, prompt_ids, response_ids, response_mask, **kw):
        item = "ref log-probs" if model is meter.ref else (
            "policy fwd" if torch.is_grad_enabled() else "old log-probs")
        used = int((response_mask > 0).any(0).nonzero().max()) + 1 if response_mask.any() else 0
        lengths = [len(p) for p in prompt_ids]
        with meter.time(item, len(lengths) * (max(lengths) + used),
                        sum(lengths) + int(response_mask.sum())):
            return logprobs(model, prompt_ids, response_ids, response_mask, **kw)

    def timed_backward(self, *a, **kw):
        with meter.time("backward"):
            return backward(self, *a, **kw)

    def timed_clip(*a, **kw):
        with meter.time("optimizer"):
            return clip(*a, **kw)

    def timed_step(self, *a, **kw):
        with meter.time("optimizer"):
            return step(self, *a, **kw)

    M.sample, M.token_logprobs = timed_sample, timed_logprobs
    torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = timed_backward, timed_clip
    torch.optim.AdamW.step = timed_step

    def undo():
        M.sample, M.token_logprobs = sample, logprobs
        torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = backward, clip
        torch.optim.AdamW.step = step
    return undo


class Arm:
    """One run's state (model, reference, optimizer, pool, random streams), stepped on demand."""

    def __init__(self, name, argv, seed):
        self.name = name
        self.args = config.train_args(argv + ["--seed", str(seed)])
        self.args.precision_used = M.choose_precision(self.args.precision, "cpu", say=False)
        self.train_set, _ = data.problems("tiny", None, None, None, None)
        self.world = W.TinyWorld()
        self.model, self.ref, self.tok = T.load_models(self.args, None, self.world)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.args.lr)
        self.rng, self.gen = random.Random(seed), torch.Generator().manual_seed(seed)
        self.pool = Pool()
        self.contexts = C.make(self.args, self.pool, self.world, None)
        self.step = 0

    def run_step(self, meter):
        """One train_step, timed; its own torch random stream (the arms interleave)."""
        self.step += 1
        state = torch.random.get_rng_state()
        torch.random.set_rng_state(self.gen.get_state())
        meter.reset()
        start = time.perf_counter()
        m, _ = T.train_step(self.step, self.model, self.ref, self.tok, self.opt, self.pool,
                            self.contexts, self.train_set, self.args, self.rng, self.world)
        total = time.perf_counter() - start
        self.gen.set_state(torch.random.get_rng_state())
        torch.random.set_rng_state(state)
        seconds = dict(meter.seconds)
        seconds["other"] = total - sum(seconds.values())
        return {"total": total, "seconds": seconds, "padded": dict(meter.padded),
                "real": dict(meter.real), "feedback_fraction": m["feedback_fraction"],
                "zero_std_frac": m["zero_std_frac"]}


def summarize(rows, warmup):
    rows = rows[warmup:]
    items = sorted({k for r in rows for k in r["seconds"]}, key=lambda k: (
        ITEMS.index(k) if k in ITEMS else len(ITEMS), k))
    med = lambda xs: round(statistics.median(xs), 4)  # noqa: E731
    return {"steps": len(rows), "total": med([r["total"] for r in rows]),
            "total_spread": [round(min(r["total"] for r in rows), 4),
                             round(max(r["total"] for r in rows), 4)],
            "seconds": {k: med([r["seconds"].get(k, 0.0) for r in rows]) for k in items},
            "padded_tokens": {k: med([r["padded"].get(k, 0) for r in rows]) for k in items
                              if any(k in r["padded"] for r in rows)},
            "real_tokens": {k: med([r["real"].get(k, 0) for r in rows]) for k in items
                            if any(k in r["real"] for r in rows)},
            "feedback_fraction": med([r["feedback_fraction"] for r in rows]),
            "zero_std_frac": med([r["zero_std_frac"] for r in rows])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default="runs/tiny/sft", help="a tiny-world SFT model")
    ap.add_argument("--steps", type=int, default=20, help="steps per arm")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch threads: each count is measured in turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--busy", action="store_true",
                    help="another process keeps one core busy while it measures")
    ap.add_argument("--extra", nargs="*", default=[],
                    help="more train.py flags for both arms (e.g. --logprob-tokens 8192)")
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                  "step_costs.json"))
    args = ap.parse_args()
    if args.steps <= args.warmup:
        sys.exit("--steps must exceed --warmup")
    out = {"command": "python experiments/step_costs.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
                      f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}",
           "what": "median seconds per step and per item (and tokens) over steps "
                   f"{args.warmup + 1}-{args.steps} of each arm, interleaved, per thread count"
                   + ("; another process keeping one core busy" if args.busy else ""),
           "threads": {}}
    hog = busy() if args.busy else None
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            out["threads"][str(threads)] = measure(args)
    finally:
        if hog:
            hog.kill()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


def measure(args):
    """GRPO and the paper's algorithm from the same SFT model, stepped in turn."""
    base = ["--init", args.init, *args.extra]
    arms = [Arm("grpo", base + ["--p-feedback", "0"], args.seed),
            Arm("lanpo", base, args.seed)]
    meter = Meter()
    rows = {a.name: [] for a in arms}
    undo = instrument(meter)
    try:
        for step in range(args.steps):
            for a in arms:   # interleaved: GRPO's step, then LANPO's, then the next
                meter.ref = a.ref
                rows[a.name].append(a.run_step(meter))
            print(f"{torch.get_num_threads()} threads, step {step + 1}: " + ", ".join(
                f"{a.name} {rows[a.name][-1]['total']:.3f} s" for a in arms), flush=True)
    finally:
        undo()
    out = {"arms": {name: summarize(r, args.warmup) for name, r in rows.items()}, "raw": rows}
    g, lp = out["arms"]["grpo"], out["arms"]["lanpo"]
    out["lanpo_over_grpo"] = round(lp["total"] / g["total"], 3)
    for name, s in out["arms"].items():
        print(f"{name}: {s['total']:.3f} s/step  " + "  ".join(
            f"{k} {v:.3f}" for k, v in s["seconds"].items()))
    print(f"LANPO / GRPO: {out['lanpo_over_grpo']:.2f}x")
    return out


if __name__ == "__main__":
    main()
