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
     sampled with (`--score-context prompt`, the paper) or, two extensions, under the plain
     prompt without an importance weight (`plain`, biased) or with a truncated one
     (`corrected`); see scoring_prompt_ids;
  6. clipped loss + k3 KL to the frozen SFT model, optimizer step (grpo.py + torch);
  7. add the step's trajectories to the pool with the current model's summaries;
  8. log metrics and samples; evaluate and checkpoint every N steps (`main`).

`--p-feedback 0` is plain GRPO through the same code: no prompt ever gets context and the pool
is never built. `--feedback placebo` is the control for a context's mere presence: the same
blocks and counts as the real contexts, with content that carries no experience of the run
(build_prompts). With `--lora-rank` (lora.py) only low-rank adapters are trained, and the frozen
SFT model of the KL term is the same weights with the adapters switched off. Simplified
relative to the paper: no vLLM, a constant learning rate, and summaries written once per
problem group (see pool.py). `python train.py` is one process; `torchrun --nproc_per_node N
train.py` splits each step's problems over N processes that meet in three places (the
problems, the update's counts and gradients, the step gathered before the pool grows), all in
ranks.py. The flags and presets are in config.py, checkpoints and logs in rundir.py,
evaluation in evaluate.py.
"""
import json
import math
import os
import random
import statistics
import sys
import time
from contextlib import contextmanager

import torch
from tqdm import tqdm

import config
import data
import evaluate as E
import grpo
import lora
import model as M
import prompts
import ranks
import rundir
import world as W
from errors import UserError, oom_hint
from pool import Entry, Pool, parse_summary
from reward import reward

# =============================================================================================
# Step 2: the feedback-aware contexts
# =============================================================================================

def n_feedback(p_feedback: float, group_size: int) -> int:
    """round(p_t * G), rounding halves up (Python's round() would send 4.5 to 4)."""
    return int(math.floor(p_feedback * group_size + 0.5))


def build_prompts(problems, pool, args, rng, world=None):
    """G prompts per problem, laid out group by group. The first round(p_t * G) of each group
    are feedback-aware when the pool has something to say; with nothing to say they stay
    plain. Returns the prompts, a per-rollout flag "has context", and per problem the ids it
    retrieved (for the metrics).

    The gold answer is never an argument here: prompts are built from the question and the
    pool alone. Inter-sample retrieval excludes the problem's own id.

    `--feedback placebo` builds exactly the contexts of `both` (same retrieval, same blocks,
    same number of principles and pitfalls, an intra block where `both` has one) and then
    replaces their content by content that carries no experience of the run (placebo_lessons,
    placebo_attempt). LANPO minus placebo is the effect of experience; placebo minus GRPO is
    what a context does by being there (the tiny world's SFT taught "listed pitfalls: choose
    among the other procedures", which explores whatever the pitfalls say)."""
    G, k = args.group_size, n_feedback(args.p_feedback, args.group_size)
    placebo = args.feedback == "placebo"
    all_prompts, has_context, retrieved = [], [], []
    for p in problems:
        principles, pitfalls, raw, found = [], [], None, []
        if k and args.feedback == "oracle":
            principles = [world.oracle_principle(p)]
        elif k and args.feedback in ("inter", "both", "placebo"):
            # Relevant Abstraction: similar *other* problems, filtered by gamma
            found = [pid for pid, _ in pool.retrieve(p["question"], exclude_id=p["id"],
                                                     k=args.top_k, gamma=args.gamma)]
            if args.inter_format == "raw":
                raw = pool.raw_attempts(found, rng) or None
            else:
                principles, pitfalls = pool.lessons(found)
            if placebo and (principles or pitfalls):
                principles, pitfalls = placebo_lessons(p, pool, len(principles), len(pitfalls),
                                                       rng, world)
        retrieved.append(found)
        for i in range(G):
            attempt = None
            if i < k and args.feedback in ("intra", "both", "placebo"):
                # Reward-Agnostic Reflection: an earlier attempt at this very problem
                attempt = _earlier_attempt(pool, p["id"], args.reflection, rng)
                if placebo and attempt is not None:
                    attempt = placebo_attempt(p, pool, rng, world)
            if i < k and (principles or pitfalls or raw or attempt is not None):
                all_prompts.append(prompts.feedback_prompt(
                    p["question"], principles, pitfalls, attempt=attempt, raw_attempts=raw,
                    leaky=args.reflection == "leaky"))
                has_context.append(True)
            else:
                all_prompts.append(prompts.solve_prompt(p["question"]))
                has_context.append(False)
    return all_prompts, has_context, retrieved


def placebo_lessons(problem, pool, n_principles, n_pitfalls, rng, world=None):
    """Placebo principles and pitfalls, as many as the real lessons had. On the tiny world:
    procedures drawn uniformly at random (the right one as likely as any other), so the block
    looks like a summary and says nothing learned. Elsewhere: the lessons of one random
    *other* problem of the pool, not chosen by similarity (experience, but not relevant)."""
    if world is not None:
        procs = rng.sample(W.PROCEDURES, n_principles + n_pitfalls)
        texts = [W.procedure_text(q) for q in procs]
        return texts[:n_principles], texts[n_principles:]
    others = _other_problems(pool, problem)
    if not others:
        return [], []
    principles, pitfalls = pool.lessons([rng.choice(others)])
    return principles[:n_principles], pitfalls[:n_pitfalls]


def placebo_attempt(problem, pool, rng, world=None):
    """A placebo for the intra-sample block. On the tiny world: a worked solution of this
    problem's numbers by a procedure drawn at random (what an attempt looks like, knowing
    nothing). Elsewhere: an attempt at a random other problem of the pool."""
    if world is not None:
        return W.solution_text(rng.choice(W.PROCEDURES), *problem["numbers"])
    others = _other_problems(pool, problem)
    return rng.choice(pool.entries[rng.choice(others)]).attempt if others else None


def _other_problems(pool, problem):
    """The pool's problems other than this one, in a fixed order (so the seed decides)."""
    return sorted(pid for pid in pool.entries if pid != problem["id"])


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
# Steps 5-6: log-probs and the GRPO update
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

    `corrected` (plain scoring with a bounded correction): the same plain prompt, and update()
    weights each token of a feedback-aware response by the truncated importance ratio
    pi(y_t | x, y_<t) / pi(y_t | x, c, y_<t), capped at --is-cap (grpo.truncated_is_weight).
    `plain` is the same estimator with the weight dropped, i.e. set to 1: A * grad log pi(y | x)
    for y ~ pi(. | x, c), with one inner epoch a PPO ratio of exactly 1 (so the clip never acts)
    and a k3 KL taken on samples that did not come from pi(. | x). It is reward-weighted
    context distillation, a guidance method, not the paper's on-policy update.

    Everything the loss computes for a row (log-probs, old log-probs, reference log-probs) uses
    the prompt returned here; the response tokens and the rewards are the same either way."""
    if args.score_context == "prompt":
        return sampled_prompt_ids
    plain_ids = M.encode_prompts(tok, [prompts.solve_prompt(p["question"]) for p in problems])
    G = args.group_size
    return [plain_ids[i // G] if ctx else ids
            for i, (ids, ctx) in enumerate(zip(sampled_prompt_ids, has_context))]


def update(model, ref_model, opt, rollouts, score_ids, advantages, args):
    """Steps 5-6: the GRPO update. Returns the loss statistics, or None when the update was
    skipped because the loss or the gradient was not finite.

    With `--score-context corrected`, rows scored under another prompt than the one they were
    sampled with (score_ids[i] != rollouts.prompt_ids[i]) get a per-token truncated importance
    weight: the policy that sampled them, pi(. | x, c), scores them once more, under no gradient.

    The batch is cut into micro-batches of at most --logprob-tokens padded tokens (to bound
    memory; see model.token_chunks); each micro-batch's loss is weighted so that the gradients
    add up to the full batch's (grpo.microbatch_weight). Rollouts arrive on the CPU; what the
    loss needs goes to the model's device.

    With several processes (ranks.py) each rank holds its own groups: the micro-batch weights
    use the global row and token counts, and the gradients are summed over ranks before the
    clip, so every rank takes the one-process step of the union batch."""
    device = M.device_of(model)
    mask = rollouts.response_mask
    # ranks meet: the loss normalizes by the whole step's rows and tokens, not this rank's
    n_rows, n_tokens = ranks.total(mask.shape[0], int(mask.sum()))
    # Rows with zero advantage carry no policy gradient; without a KL term they carry nothing
    # at all, so they are not even scored (often most groups in the tiny world).
    rows = [i for i in range(mask.shape[0]) if args.beta > 0 or advantages[i] != 0]
    lengths = [len(score_ids[i]) + int(mask[i].sum()) for i in rows]
    chunks = [[rows[j] for j in c] for c in M.token_chunks(lengths, args.logprob_tokens)]
    mask_dev, adv_dev = mask.to(device), advantages.to(device)

    def logprobs_of(m, idx):
        return M.token_logprobs(m, [score_ids[i] for i in idx], rollouts.response_ids[idx],
                                mask[idx], temperature=args.temperature)

    # pi_ref and pi_old are fixed for the whole step: computed once, without gradients.
    with torch.no_grad():
        ref = [logprobs_of(ref_model, c) for c in chunks] if args.beta > 0 else [None] * len(chunks)
        old = [logprobs_of(model, c) for c in chunks] \
            if args.inner_epochs > 1 or args.score_context == "corrected" else None
        weights = [None] * len(chunks)
        if args.score_context == "corrected":
            weights = [off_policy_weight(model, rollouts, score_ids, c, old[j], args)
                       for j, c in enumerate(chunks)]
    model.train()
    stats_acc, grad_norm = [], torch.tensor(0.0)
    for _ in range(args.inner_epochs):
        opt.zero_grad(set_to_none=True)
        epoch_loss = 0.0
        for j, c in enumerate(chunks):
            logp = logprobs_of(model, c)
            # With one inner epoch pi_old is the current policy: rho = 1 exactly.
            old_logp = old[j] if old is not None else logp.detach()
            loss, stats = grpo.policy_loss(logp, old_logp, ref[j], adv_dev[c], mask_dev[c],
                                           clip_eps=args.clip, beta=args.beta,
                                           aggregation=args.aggregation,
                                           max_len=args.max_new_tokens, is_weight=weights[j])
            w = grpo.microbatch_weight(mask[c], n_rows, n_tokens, args.aggregation)
            (loss * w).backward()
            epoch_loss += w * stats["loss"]
            stats_acc.append((w, stats))
        ranks.sum_grads(model.parameters())   # ranks meet: the union batch's gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        # A non-finite loss or gradient would poison the weights and Adam's moments: skip the
        # update (main counts these and stops after --max-bad-updates in a row). With several
        # inner epochs, the epochs before the bad one have already been applied.
        epoch_loss, = ranks.total(epoch_loss)   # every rank skips, or none does
        if not (math.isfinite(epoch_loss) and torch.isfinite(grad_norm)):
            opt.zero_grad(set_to_none=True)
            model.eval()
            return None
        opt.step()
        # free the gradients now: they would otherwise stay allocated through the next sampling
        opt.zero_grad(set_to_none=True)
    model.eval()
    keys = ("loss", "pg_loss", "kl", "clip_frac", "ratio", "is_weight")
    # the statistics of the whole step: weighted sums over this rank's micro-batches, summed
    # over ranks (one process: the sums themselves)
    total_w, *sums = ranks.total(sum(w for w, _ in stats_acc),
                                 *(sum(w * s[key] for w, s in stats_acc) for key in keys))
    if not total_w:   # every advantage was zero and beta = 0: nothing to learn this step
        return {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio": 1.0,
                "grad_norm": 0.0}
    out = {key: v / total_w for key, v in zip(keys, sums)}
    out["grad_norm"] = float(grad_norm)
    return out


def off_policy_weight(model, rollouts, score_ids, rows, target_logp, args):
    """Per-token truncated importance weights of `rows` for `--score-context corrected`:
    min(pi_old(y_t | x) / pi_old(y_t | x, c), cap) where the row was sampled under a context
    (pi_old(. | x, c) is the policy that sampled it), exactly 1 where it was not (sampled and
    scored under the same plain prompt). target_logp: the rows' log-probs under score_ids."""
    off = [j for j, i in enumerate(rows) if score_ids[i] != rollouts.prompt_ids[i]]
    w = torch.ones_like(target_logp)
    if off:
        idx = [rows[j] for j in off]
        behavior = M.token_logprobs(model, [rollouts.prompt_ids[i] for i in idx],
                                    rollouts.response_ids[idx], rollouts.response_mask[idx],
                                    temperature=args.temperature)
        w[off] = grpo.truncated_is_weight(target_logp[off], behavior, args.is_cap)
    return w


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
    """Every rollout enters the pool with its group's summary (pool.py caps each problem)."""
    for i, p in enumerate(problems):
        principles, pitfalls = summaries[i] if summaries and summaries[i] else ([], [])
        pool.add([Entry(problem_id=p["id"], question=p["question"], attempt=texts[i * G + j],
                        reward=rewards[i * G + j], step=step, principles=principles,
                        pitfalls=pitfalls, meta={k: p[k] for k in ("family",) if k in p})
                  for j in range(G)])


# =============================================================================================
# One RL step
# =============================================================================================

def train_step(step, model, ref_model, tok, opt, pool, train_set, args, rng, world=None):
    """One LANPO step (the module docstring's list). Returns (metrics, sample completions)."""
    G, phase = args.group_size, Phases()
    with phase("pool"):
        # 1. a batch of problems (ranks meet: with N processes, rank 0's draw is the step's
        #    and each rank keeps its share of whole problems, ranks.py)
        problems = ranks.share(rng.sample(train_set, min(args.problems_per_step,
                                                         len(train_set))))
        # 2. G prompts per problem, round(p_t * G) of them feedback-aware
        all_prompts, has_context, retrieved = build_prompts(problems, pool, args, rng, world)
    # 3. all rollouts in one batched call
    with phase("generation"), oom_hint("sampling the rollouts", "lower --sample-micro-batch"):
        rollouts = M.sample(model, tok, all_prompts, n=1, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p,
                            micro_batch=args.sample_micro_batch)
    # 4. rewards: rollout i*G + j answers problem i
    with phase("reward"):
        golds = [p["answer"] for p in problems for _ in range(G)]
        rewards = [reward(text, gold) for text, gold in zip(rollouts.texts, golds)]
    # 5-6. advantages per group, log-probs, loss, optimizer step
    with phase("update"), oom_hint("computing log-probs and gradients",
                                   "lower --logprob-tokens or pass --grad-checkpointing"):
        advantages = grpo.group_advantages(torch.tensor(rewards), G, scale=args.scale_rewards)
        score_ids = scoring_prompt_ids(tok, problems, rollouts.prompt_ids, has_context, args)
        stats = update(model, ref_model, opt, rollouts, score_ids, advantages, args)
    # 7. the step's trajectories enter the pool, with the current model's summaries
    summaries = None   # None: no summary was asked for (GRPO, intra-only, raw, oracle)
    with phase("pool"), oom_hint("writing summaries", "lower --sample-micro-batch"):
        if args.p_feedback > 0 and args.feedback in ("inter", "both", "placebo") and \
                args.inter_format == "summary":
            summaries = summarize_groups(model, tok, problems, rollouts.texts, rewards, args, rng)
        lengths, truncated = rollouts.response_mask.sum(1).tolist(), rollouts.truncated.tolist()
        # ranks meet: from here on every rank holds the whole step, in rank order (ranks.py),
        # so every rank grows the same pool; one process: the lists as they are
        problems, all_prompts, texts, rewards, has_context, retrieved, summaries, lengths, \
            truncated = ranks.gather(problems, all_prompts, rollouts.texts, rewards, has_context,
                                     retrieved, summaries, lengths, truncated)
        if args.p_feedback > 0 and args.feedback != "oracle":
            grow_pool(pool, problems, texts, rewards, summaries, step, G)
    # 8. metrics, and a few completions to read
    m = step_metrics(step, rewards, has_context, lengths, truncated, stats, pool, retrieved, args,
                     phase.seconds)
    if world is not None:   # the tiny world checks the language channel against the truth
        inter = args.p_feedback > 0 and args.feedback in ("inter", "both", "placebo")
        m.update(world.language_channel(problems, retrieved if inter else None, summaries,
                                         rewards, G, pool, step))
        m.update(world.rl_train_accuracy(problems, rewards, has_context, G))
        m["rl_family_successes"] = world.family_successes(problems, rewards, has_context, G)
    samples = [{"step": step, "problem_id": problems[i]["id"], "gold": problems[i]["answer"],
                "prompt": all_prompts[i * G + j], "response": texts[i * G + j],
                "reward": rewards[i * G + j], "feedback_aware": has_context[i * G + j]}
               for i in range(min(2, len(problems))) for j in (0, G - 1)]
    return m, samples


class Phases:
    """Seconds spent in each phase of a step: `with phase("update"): ...`."""

    def __init__(self):
        self.seconds = {}

    @contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _mean(xs):
    return statistics.mean(xs) if xs else None


def step_metrics(step, rewards, has_context, lengths, truncated, stats, pool, retrieved, args,
                 seconds):
    """The step's row of metrics.jsonl. lengths, truncated: per rollout (the whole step's)."""
    G = args.group_size
    n_problems = len(rewards) // G
    inter = args.p_feedback > 0 and args.feedback in ("inter", "both", "placebo")
    m = {"step": step,
         "reward": _mean(rewards),
         "reward_feedback": _mean([r for r, c in zip(rewards, has_context) if c]),
         "reward_plain": _mean([r for r, c in zip(rewards, has_context) if not c]),
         "feedback_fraction": _mean([float(c) for c in has_context]),
         # groups whose G rewards are all equal: zero advantage, no gradient (grpo.py)
         "zero_std_frac": grpo.zero_std_fraction(torch.tensor(rewards), G),
         "response_length": _mean(lengths),
         "truncated_frac": _mean([float(t) for t in truncated]),
         "pool_size": len(pool),
         "coverage": _mean([float(any(has_context[i * G:(i + 1) * G]))
                            for i in range(n_problems)]),
         "retrieval_hit_rate": _mean([float(bool(r)) for r in retrieved]) if inter else None,
         "skipped_update": stats is None,
         **{f"t_{k}": round(v, 4) for k, v in seconds.items()},
         "tokens_per_s": sum(lengths) / max(seconds["generation"], 1e-9)}
    m.update(stats or {})
    return m


# =============================================================================================
# Main: load, loop, save
# =============================================================================================

def main(argv=None):
    args = config.resolve_config(config.build_parser().parse_args(argv))
    # under torchrun: join the other processes, each on its own GPU (ranks.py); else nothing
    args.device = ranks.init(args.device)
    if args.problems_per_step < ranks.world_size():
        raise UserError(f"--problems-per-step {args.problems_per_step} is fewer than the "
                        f"{ranks.world_size()} processes: every rank needs a problem")
    if args.init == config.SMOL_GGUF:
        args.init, args.gguf_file = M.smol_gguf()
    if args.init == config.PRESETS[args.preset]["init"] and not os.path.isdir(args.init):
        hint = "" if args.preset == "tiny" else f" --preset {args.preset}"
        raise UserError(f"no SFT model at {args.init}: run `python sft.py{hint}` first, or "
                        "pass --init")
    rundir.check_run_dir(args, config.RESUMABLE)
    train_set, eval_sets = data.problems(args.data, args.eval_data, args.eval_limit,
                                         args.question_field, args.answer_field)
    world = W.TinyWorld() if args.data == "tiny" else None
    # the precision this run computes in (config.json and every metrics row record it)
    main_rank = ranks.is_main()   # rank 0 alone writes into the run directory and speaks
    args.precision_used = M.choose_precision(args.precision, args.device, say=main_rank)
    if main_rank:
        print("config:", json.dumps(vars(args), sort_keys=True))

    # The policy starts from the SFT model (or the checkpoint); the reference stays frozen at
    # the SFT model for the KL term.
    ckpt = rundir.find_checkpoint(args.run_dir) if args.resume else None
    if args.resume and ckpt is None and main_rank:
        print("no checkpoint yet: starting the run from the beginning")
    # With LoRA the base weights never change: they come from --init, the adapters from the
    # checkpoint (lora.py).
    start_from = ckpt if ckpt and not args.lora_rank else None
    model, tok = M.load_model(start_from or args.init,
                              gguf_file=None if start_from else args.gguf_file,
                              device=args.device, precision=args.precision_used,
                              grad_checkpointing=args.grad_checkpointing)
    if args.lora_rank:
        lora.add_lora(model, args.lora_rank, lora.resolve_alpha(args.lora_rank, args.lora_alpha),
                      args.seed)
        if ckpt:
            lora.load_adapters(model, ckpt)
    if world is not None and not W.is_tiny_tokenizer(tok, world):
        raise UserError(f"{args.init} is not a tiny-world model (its tokenizer is not the tiny "
                        "world's); train it with `python sft.py`, or pass --preset/--data for "
                        "a real model")
    ref_model = None
    if args.beta > 0 and args.lora_rank:
        ref_model = lora.BaseModel(model)   # the same weights, adapters off: no second copy
    elif args.beta > 0:
        ref_model = M.load_model(args.init, gguf_file=args.gguf_file, device=args.device,
                                 precision=args.precision_used, frozen=True)[0]
        ref_model.requires_grad_(False)
    opt = torch.optim.AdamW(lora.trainable(model), lr=args.lr, weight_decay=args.weight_decay)
    # --seed reaches every draw: Python's (problems, contexts, shuffles) and torch's (sampling);
    # rank 0 draws from --seed itself, rank r > 0 from a seed derived from it (ranks.py)
    rng = random.Random(ranks.rank_seed(args.seed))
    torch.manual_seed(ranks.rank_seed(args.seed))
    pool, start = Pool(), 0
    counters = {"bad_in_a_row": 0, "skipped_total": 0}   # non-finite updates
    if ckpt:
        state = rundir.load_state(ckpt)
        if state.get("world_size", 1) != ranks.world_size():
            raise UserError(f"--resume: this run was trained with {state.get('world_size', 1)} "
                            f"process(es) and is resumed with {ranks.world_size()}; resume it "
                            "with the same number (each rank's random streams are in the "
                            "checkpoint)")
        opt.load_state_dict(state["optimizer"])
        model.save_dtype = state.get("save_dtype")   # the dtype final/ is saved in
        # every rank continues its own streams (state["rng"] is rank 0's, as in one process)
        rundir.set_rng_state(rng, state.get("rank_rng", [state["rng"]])[ranks.rank()])
        start, counters = state["step"], state["counters"]
        counters["bad_in_a_row"] = 0   # a person resumed: give the run a fresh chance
        pool = Pool.load(os.path.join(ckpt, "pool.jsonl"))
        if main_rank:
            print(f"resumed from step {start} ({len(pool)} pool entries)")
    metrics_path, samples_path = (os.path.join(args.run_dir, n)
                                  for n in ("metrics.jsonl", "samples.jsonl"))
    ranks.barrier()   # every rank has read the run directory before rank 0 writes into it
    if main_rank:
        rundir.start_run_dir(args, [metrics_path, samples_path], start)

    if start == 0 and args.eval_every and main_rank:
        rundir.append_jsonl(metrics_path, [{"step": 0, "precision": args.precision_used,
                                            **E.periodic_eval(model, tok, eval_sets, args, world)}])
    bar = tqdm(range(start + 1, args.steps + 1), desc="lanpo" if args.p_feedback else "grpo",
               dynamic_ncols=True, disable=None if main_rank else True, initial=start,
               total=args.steps)

    def checkpoint(step):
        # every rank's random streams go into rank 0's checkpoint (one process: as before)
        extra = {} if ranks.world_size() == 1 else \
            {"world_size": ranks.world_size(), "rank_rng": ranks.gather_objects(
                rundir.rng_state(rng))}
        if main_rank:
            rundir.save_checkpoint(args.run_dir, step, model, tok, opt, pool, rng, counters,
                                   extra)

    device = M.device_of(model)
    for step in bar:
        M.reset_peak_memory(device)
        m, samples = train_step(step, model, ref_model, tok, opt, pool, train_set, args, rng,
                                world)
        m["precision"] = args.precision_used
        if device.type == "cuda":
            m["peak_gpu_gib"] = M.peak_memory_gib(device)
        # A non-finite loss or gradient skips the update; several in a row stop the run.
        skipped = m["skipped_update"]
        counters["bad_in_a_row"] = counters["bad_in_a_row"] + 1 if skipped else 0
        counters["skipped_total"] += skipped
        m["skipped_total"] = counters["skipped_total"]
        if args.eval_every and step % args.eval_every == 0 and main_rank:
            m.update(E.periodic_eval(model, tok, eval_sets, args, world))
        if main_rank:
            rundir.append_jsonl(metrics_path, [m])
            rundir.append_jsonl(samples_path, samples)
        bar.set_postfix(reward=f"{m['reward']:.2f}", zero_std=f"{m['zero_std_frac']:.2f}")
        if counters["bad_in_a_row"] >= args.max_bad_updates:
            # The skipped updates did not touch the weights: this checkpoint is usable.
            checkpoint(step)
            if main_rank:   # every rank stops; one of them says why
                print(f"error: {counters['bad_in_a_row']} non-finite updates in a row (last "
                      f"at step {step}); stopping. The checkpoint at step {step} holds the last "
                      "finite weights; lower --lr or raise --beta before resuming.",
                      file=sys.stderr)
            sys.exit(1)
        if step % args.ckpt_every == 0 or step == args.steps:
            checkpoint(step)

    if not main_rank:   # the other ranks are done: rank 0 saves and evaluates
        return
    lora.save_model(model, tok, os.path.join(args.run_dir, "final"))   # adapters merged
    pool.save(os.path.join(args.run_dir, "pool.jsonl"))
    curves = rundir.plot_curves(args.run_dir)
    if args.final_eval:
        results = E.final_eval(model, tok, pool, eval_sets, args, metrics_path)
        out = {"step": args.steps, "results": results}
        if world is not None:   # the finer instrument: sampled mean@8 per rl family
            out["sampled"] = {"rl-test": E.sampled_eval(model, tok, eval_sets["rl-test"], args,
                                                        world)}
        rundir.atomic_write(os.path.join(args.run_dir, "eval.json"), json.dumps(out, indent=1))
    print(f"run saved in {args.run_dir}" + (f" (curves: {curves})" if curves else ""))


if __name__ == "__main__":
    ranks.run_cli(main)   # errors.run_cli; under torchrun, a failing rank names itself
