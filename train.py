"""Stage 2 of LANPO (arXiv 2510.16552): GRPO with a pool of language experience.

Each step samples G rollouts per problem x; k = round(p_t * G) of them are feedback-aware, drawn
from pi(y | x, c) with a context c from the pool, the rest from pi(y | x). All G form one GRPO
group and only the numerical reward drives the update; then the step's rollouts enter the
pool with the lessons the current model distills from them. `train_step` is the paper's loop:
  1. a batch of problems             5. A_i within each group of G (grpo.py)
  2. G prompts each, k with c         6. clipped surrogate + beta * KL, one optimizer step
  3. y ~ pi(. | x, c), one batch      7. the pool grows (pool.py)
  4. r_i (reward.py)                  8. metrics and a few samples
Simplified relative to the paper: no vLLM, a constant learning rate, one summary per problem
group. `--p-feedback 0` is GRPO through the same code; the controls and extensions (placebo,
oracle, plain or corrected scoring) are in support/controls.py.
"""
import json
import math
import os
import random
from dataclasses import dataclass

import torch

import evaluate as E
import grpo
import prompts
from pool import NO_LESSONS, Entry, Pool, parse_summary
from reward import reward
from support import config, data, lora, progress, ranks, rundir
from support import controls as C
from support import model as M
from support import world as W
from support.errors import Phases, UserError

# =============================================================================================
# Step 2: G prompts per problem, k of them with a context c from the pool
# =============================================================================================


def n_feedback(p_feedback: float, group_size: int) -> int:
    """k = round(p_t * G), halves up (Python's round() would send 4.5 to 4). The paper's
    ablation (table 3): p_t = 0.75 is best, and 1.0, where no rollout practices without c,
    collapses."""
    return int(math.floor(p_feedback * group_size + 0.5))


def build_prompts(problems, contexts, args, rng):
    """G prompts per problem, group by group: the first k carry a context c when the pool has
    something to say, the rest are plain. `contexts` (pool.Contexts, or a control's, chosen
    once in main) reads the pool. Returns the prompts, whether each has c, and per problem the
    ids it retrieved. No argument holds a gold answer."""
    G, k = args.group_size, n_feedback(args.p_feedback, args.group_size)
    texts, has_context, retrieved = [], [], []
    for p in problems:
        # Relevant Abstraction: the lessons of similar *other* problems (similarity >= gamma)
        lessons = contexts.lessons(p, rng) if k else NO_LESSONS
        retrieved.append(lessons.found)
        for i in range(G):
            # Reward-Agnostic Reflection: an earlier attempt at x, drawn blind to its reward
            attempt = contexts.attempt(p, rng) if i < k else None
            with_c = bool(i < k and (lessons.principles or lessons.pitfalls or lessons.raw
                                     or attempt is not None))
            texts.append(prompts.feedback_prompt(p["question"], lessons.principles,
                                                 lessons.pitfalls, attempt=attempt,
                                                 raw_attempts=lessons.raw, leaky=contexts.leaky)
                         if with_c else prompts.solve_prompt(p["question"]))
            has_context.append(with_c)
    return texts, has_context, retrieved


# =============================================================================================
# Steps 5-6: the GRPO update
# =============================================================================================

def update(model, ref_model, opt, rollouts, score_ids, advantages, args):
    """The clipped, KL-penalized update on this rank's groups (grpo.py has the formulas).
    Returns the step's loss statistics, or None when a non-finite loss or gradient skipped it.
    With N ranks, every rank takes the one-process step of the union batch (ranks.py)."""
    device, mask = M.device_of(model), rollouts.response_mask
    totals = ranks.LossTotals(mask)   # the whole step's rows and tokens, and its statistics
    # rows with A_i = 0 carry no policy gradient, and with beta = 0 nothing at all: not scored
    rows = [i for i in range(mask.shape[0]) if args.beta > 0 or advantages[i] != 0]
    # micro-batches of at most --logprob-tokens padded tokens bound the memory
    lengths = [len(score_ids[i]) + int(mask[i].sum()) for i in rows]
    chunks = [[rows[j] for j in c] for c in M.token_chunks(lengths, args.logprob_tokens)]
    mask_dev, adv_dev = mask.to(device), advantages.to(device)

    def logprobs(m, idx):   # log pi(y_t | prompt, y_<t), each row under its scoring prompt
        return M.token_logprobs(m, [score_ids[i] for i in idx], rollouts.response_ids[idx],
                                mask[idx], temperature=args.temperature)

    with torch.no_grad():   # pi_ref and pi_old stay fixed for the whole step
        ref = [logprobs(ref_model, c) if args.beta > 0 else None for c in chunks]
        old = [logprobs(model, c) for c in chunks] \
            if args.inner_epochs > 1 or C.weighs_tokens(args) else None
        weights = C.importance_weights(model, rollouts, score_ids, chunks, old, args)
    model.train()
    for _ in range(args.inner_epochs):
        opt.zero_grad(set_to_none=True)
        for j, c in enumerate(chunks):
            logp = logprobs(model, c)
            # rho = pi / pi_old: with one inner epoch pi_old is pi itself, and rho = 1 exactly
            old_logp = old[j] if old is not None else logp.detach()
            loss, stats = grpo.policy_loss(logp, old_logp, ref[j], adv_dev[c], mask_dev[c],
                                           clip_eps=args.clip, beta=args.beta,
                                           aggregation=args.aggregation,
                                           max_len=args.max_new_tokens, is_weight=weights[j])
            # each micro-batch weighted so that their gradients add up to the whole step's
            w = grpo.microbatch_weight(mask[c], *totals.counts, args.aggregation)
            (loss * w).backward()
            totals.add(w, stats)
        ranks.sum_grads(model.parameters())   # N ranks: the union batch's gradient
        # clipped to --max-grad-norm; logged as grad_norm (the paper's are stable, figure 5b)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        # a non-finite loss or gradient would poison the weights and Adam's moments: skip
        # (with several inner epochs, the epochs before stay applied)
        if not totals.epoch_is_finite(grad_norm):
            opt.zero_grad(set_to_none=True)
            model.eval()
            return None
        opt.step()
        opt.zero_grad(set_to_none=True)   # free the gradients before the next sampling
    model.eval()
    return totals.result(grad_norm)


# =============================================================================================
# Step 7: lessons, and the pool grows
# =============================================================================================

def summarize_groups(model, tok, problems, texts, rewards, args, rng):
    """The current model distills each group's attempts, with their outcomes, into principles
    and pitfalls, in one greedy batch: up to --summary-attempts distinct attempts, at most half
    of them right. None when the run reads no lessons (GRPO, intra only, raw, oracle)."""
    if not (C.inter_sample(args) and args.inter_format == "summary"):
        return None
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


def grow_pool(pool, step_record, step, args):
    """Every rollout enters the pool with its group's lessons (the pool caps each problem).
    GRPO and the oracle never read the pool, so it stays empty."""
    if args.p_feedback == 0 or args.feedback == "oracle":
        return
    s, G = step_record, args.group_size
    for i, p in enumerate(s.problems):
        principles, pitfalls = s.summaries[i] if s.summaries and s.summaries[i] else ([], [])
        pool.add([Entry(problem_id=p["id"], question=p["question"], attempt=s.texts[i * G + j],
                        reward=s.rewards[i * G + j], step=step, principles=principles,
                        pitfalls=pitfalls, meta={k: p[k] for k in ("family",) if k in p})
                  for j in range(G)])


# =============================================================================================
# One RL step
# =============================================================================================

def train_step(step, model, ref_model, tok, opt, pool, contexts, train_set, args, rng,
               world=None):
    """One LANPO step (the module docstring's list). Returns (metrics, sample completions)."""
    G, phase = args.group_size, Phases()
    with phase("pool"):
        # 1. a batch of problems (N ranks: each keeps its share of rank 0's draw)
        problems = ranks.share(rng.sample(train_set, min(args.problems_per_step, len(train_set))))
        # 2. G prompts per problem, k = round(p_t * G) of them with a context c
        texts, has_context, retrieved = build_prompts(problems, contexts, args, rng)
    with phase("generation"):
        # 3. y ~ pi(. | x, c) for every prompt, in one batched call
        rollouts = M.sample(model, tok, texts, n=1, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p,
                            micro_batch=args.sample_micro_batch, compile=args.compile)
    with phase("reward"):
        # 4. r_i, the numerical reward alone: is rollout i's answer the gold one of its problem?
        rewards = [reward(y, problems[i // G]["answer"]) for i, y in enumerate(rollouts.texts)]
    with phase("update"):
        # 5. A_i = (r_i - mean(r)) / (std(r) + eps) within each group of G
        advantages = grpo.group_advantages(torch.tensor(rewards), G, scale=args.scale_rewards)
        # 6. the loss on log pi(y | x, c) (controls.py: the other scorings), one optimizer step
        score_ids = C.scoring_prompts(tok, problems, rollouts.prompt_ids, has_context, args)
        stats = update(model, ref_model, opt, rollouts, score_ids, advantages, args)
    with phase("pool"):
        # 7. lessons from each group; the step's rollouts enter the pool (N ranks: the whole
        #    step, gathered in rank order, so every rank grows the same pool)
        summaries = summarize_groups(model, tok, problems, rollouts.texts, rewards, args, rng)
        whole = ranks.gather(StepRecord.of(problems, texts, rollouts, rewards, has_context,
                                           retrieved, summaries))
        grow_pool(pool, whole, step, args)
    # 8. metrics, and a few completions to read
    m = step_metrics(step, whole, stats, pool, args, phase.seconds, world)
    return m, whole.samples(step, G)


@dataclass
class StepRecord:
    """What a step made: per problem (problems, retrieved, summaries) or per rollout (the
    rest, G per problem, group by group). ranks.gather makes one of the whole step."""
    problems: list
    prompts: list
    texts: list
    rewards: list
    has_context: list
    retrieved: list
    summaries: list | None   # None: no summary was asked for
    lengths: list
    truncated: list
    decode_steps: list   # one number per rank
    compiles: list       # one number per rank: graphs --compile built in the step

    @classmethod
    def of(cls, problems, texts, rollouts, rewards, has_context, retrieved, summaries):
        return cls(problems, texts, rollouts.texts, rewards, has_context, retrieved, summaries,
                   rollouts.response_mask.sum(1).tolist(), rollouts.truncated.tolist(),
                   [rollouts.decode_steps], [rollouts.compiles])

    def samples(self, step, G):
        """The first and last rollout of the first two problems, to read in samples.jsonl."""
        return [{"step": step, "problem_id": self.problems[i]["id"],
                 "gold": self.problems[i]["answer"], "prompt": self.prompts[i * G + j],
                 "response": self.texts[i * G + j], "reward": self.rewards[i * G + j],
                 "feedback_aware": self.has_context[i * G + j]}
                for i in range(min(2, len(self.problems))) for j in (0, G - 1)]


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def step_metrics(step, s, stats, pool, args, seconds, world):
    """The step's row of metrics.jsonl, from the whole step's record `s`."""
    G, inter = args.group_size, C.inter_sample(args)
    n_problems = len(s.rewards) // G
    m = {"step": step,
         "reward": _mean(s.rewards),
         "reward_feedback": _mean([r for r, c in zip(s.rewards, s.has_context) if c]),
         "reward_plain": _mean([r for r, c in zip(s.rewards, s.has_context) if not c]),
         "feedback_fraction": _mean([float(c) for c in s.has_context]),
         # groups whose G rewards are all equal: A_i = 0, no gradient
         "zero_std_frac": grpo.zero_std_fraction(torch.tensor(s.rewards), G),
         "response_length": _mean(s.lengths),
         "truncated_frac": _mean([float(t) for t in s.truncated]),
         "pool_size": len(pool),
         "coverage": _mean([float(any(s.has_context[i * G:(i + 1) * G]))
                            for i in range(n_problems)]),
         "retrieval_hit_rate": _mean([float(bool(r)) for r in s.retrieved]) if inter else None,
         "skipped_update": stats is None,
         **{f"t_{k}": round(v, 4) for k, v in seconds.items()},
         "tokens_per_s": sum(s.lengths) / max(seconds["generation"], 1e-9),
         # this rank's sampling time per decoding step (its prefill included)
         "ms_per_decode_step": 1000 * seconds["generation"] / max(s.decode_steps[0], 1),
         # --compile: graphs built in this step (a new cache length or batch shape is one)
         **({"compiles": s.compiles[0]} if args.compile else {})}
    m.update(stats or {})
    if world is not None:   # the tiny world checks the language channel against the truth
        m.update(world.language_channel(s.problems, s.retrieved if inter else None, s.summaries,
                                        s.rewards, G, pool, step))
        m.update(world.rl_train_accuracy(s.problems, s.rewards, s.has_context, G))
        m["rl_family_successes"] = world.family_successes(s.problems, s.rewards, s.has_context,
                                                          G)
    return m


# =============================================================================================
# Main: load, loop, save
# =============================================================================================

def main(argv=None):
    args = config.train_args(argv)   # flags; with --resume, the run's own settings
    args.device = ranks.init(args.device)   # torchrun: join the other ranks, one GPU each
    config.check_training_run(args)         # before anything loads or writes
    train_set, eval_sets = data.problems(args.data, args.eval_data, args.eval_limit,
                                         args.question_field, args.answer_field)
    world = W.TinyWorld() if args.data == "tiny" else None
    bank_problems = C.placebo_problems(args, train_set, eval_sets)   # --placebo-from prior only
    run = rundir.Run(args)   # rank 0 writes into the run directory and speaks
    threads = config.Threads(args)
    run.say(threads.line)
    if args.compile:
        run.say("--compile:", M.compile_backend(M.resolve_device(args.device))[1])
    args.precision_used = M.choose_precision(args.precision, args.device, say=run.main)
    run.say("config:", json.dumps(vars(args), sort_keys=True))
    ckpt = run.find_checkpoint()   # with --resume: where the run stopped, if anywhere
    model, ref_model, tok = load_models(args, ckpt, world)
    opt = torch.optim.AdamW(lora.trainable(model), lr=args.lr, weight_decay=args.weight_decay)
    # --seed reaches every draw: Python's (problems, contexts) and torch's (sampling)
    rng = random.Random(ranks.rank_seed(args.seed))
    torch.manual_seed(ranks.rank_seed(args.seed))
    start, pool = run.resume(ckpt, model, opt, rng, Pool)   # (0, an empty pool) or the ckpt's
    # a real-data placebo's content: the starting model's lessons, written once (None otherwise)
    bank = C.placebo_bank(run, start, model, tok, bank_problems, args, rng, summarize_groups)
    contexts = C.make(args, pool, world, bank)   # the paper's contexts c, or a control's
    if start == 0 and run.evaluates(0):   # step 0: the SFT model
        run.log({"step": 0, "precision": args.precision_used,
                 **E.periodic_eval(model, tok, eval_sets, args, world)})
    bar = progress.bar(range(start + 1, args.steps + 1), "lanpo" if args.p_feedback else "grpo",
                       args.steps, initial=start, enabled=run.main)
    device = M.device_of(model)
    for step in bar:
        threads.follow()        # on the CPU: the cores other programs leave free
        M.peak_memory(device)   # from here: this step's peak (on a GPU)
        m, samples = train_step(step, model, ref_model, tok, opt, pool, contexts, train_set,
                                args, rng, world)
        m["precision"] = args.precision_used
        if device.type == "cuda":
            m["peak_gpu_gib"], m["peak_gpu_reserved_gib"] = M.peak_memory(device, reserved=True)
        run.count_skipped(m)   # a non-finite update is skipped; several in a row stop the run
        if run.evaluates(step):   # rank 0, every --eval-every steps
            m.update(E.periodic_eval(model, tok, eval_sets, args, world))
        run.log(m, samples)
        bar.set_postfix(reward=f"{m['reward']:.2f}", zero_std=f"{m['zero_std_frac']:.2f}")
        if run.too_many_skipped():
            run.stop_unstable(step, model, tok, opt, pool, rng)
        if step % args.ckpt_every == 0 or step == args.steps:
            run.checkpoint(step, model, tok, opt, pool, rng)

    if not run.main:   # the other ranks are done: rank 0 saves and evaluates
        return
    lora.save_model(model, tok, os.path.join(args.run_dir, "final"))   # LoRA: adapters merged
    curves = run.save_pool_and_curves(pool)
    if args.final_eval:
        out = {"step": args.steps,
               "results": E.final_eval(model, tok, pool, eval_sets, args, run.metrics_path)}
        if world is not None:   # the finer instrument: sampled mean@8 per rl family
            out["sampled"] = {"rl-test": E.sampled_eval(model, tok, eval_sets["rl-test"], args,
                                                        world)}
        run.write_json("eval.json", out)
    run.say(f"run saved in {args.run_dir}" + (f" (curves: {curves})" if curves else "")
            + f"; one page of it: python evaluate.py report {args.run_dir}")


def load_models(args, ckpt, world):
    """The policy pi_theta (the SFT model, or the checkpoint's weights), the frozen reference
    pi_ref of the KL term (the SFT model; with LoRA the same weights with the adapters off, no
    second copy; None when beta = 0) and the tokenizer."""
    start_from = ckpt if ckpt and not args.lora_rank else None   # LoRA: the base from --init
    try:
        model, tok = M.load_model(start_from or args.init,
                                  gguf_file=None if start_from else args.gguf_file,
                                  device=args.device, precision=args.precision_used,
                                  grad_checkpointing=args.grad_checkpointing)
    except UserError as e:   # a damaged checkpoint: name the way out
        if start_from is None:
            raise
        raise UserError(f"{e}; restore it, or delete {ckpt} to start the run again") from None
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
        ref_model = lora.BaseModel(model)
    elif args.beta > 0 and start_from is None:   # the policy is the SFT model itself: copy it
        ref_model = M.frozen_copy(model)
    elif args.beta > 0:
        ref_model = M.load_model(args.init, gguf_file=args.gguf_file, device=args.device,
                                 precision=args.precision_used, frozen=True)[0]
        ref_model.requires_grad_(False)
    return model, ref_model, tok


if __name__ == "__main__":
    ranks.run_cli(main)   # one line per error; under torchrun a failing rank names itself
