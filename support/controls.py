"""The controls and extensions beside the paper's path, in one seam.

train.py follows the paper: contexts c from the pool, every response scored under the prompt it
was sampled with, log pi(y | x, c). The controls change one of three things, and only here:
- a context's content: `--feedback placebo` (the blocks and counts of `both`, with content that
  carries no experience of the run), `oracle` (tiny world: the family's true rule), and
  `--inter-format raw` (retrieved attempts instead of lessons);
- the prompt a feedback-aware response is scored under: `--score-context plain|corrected`;
- each token's weight in the loss: the truncated importance weight of `corrected`.
With the defaults every function here hands the paper's values back unchanged, so a reader of
the paper can skip this file.
"""
import math

import torch

import prompts
from support import model as M
from support import world as W

LESSON_FEEDBACK = ("inter", "both", "placebo")    # --feedback values with an inter-sample block
ATTEMPT_FEEDBACK = ("intra", "both", "placebo")   # ... and with an intra-sample block


def inter_sample(args) -> bool:
    """Does the run retrieve other problems' lessons (Relevant Abstraction, or its placebo)?"""
    return args.p_feedback > 0 and args.feedback in LESSON_FEEDBACK


def intra_sample(args) -> bool:
    """Does the run show earlier attempts at the same problem (Reward-Agnostic Reflection)?"""
    return args.p_feedback > 0 and args.feedback in ATTEMPT_FEEDBACK


# --- What a context holds -------------------------------------------------------------------

def lessons(problem, found, principles, pitfalls, k, pool, args, rng, world=None):
    """The inter-sample block of one problem: (principles, pitfalls, raw attempts or None).
    The paper: the retrieved problems' lessons as they are."""
    if k and args.feedback == "oracle":   # the family's true rule: is the summary the bottleneck?
        return [world.oracle_principle(problem)], [], None
    if args.inter_format == "raw":        # ablation: the retrieved attempts, not distilled
        return [], [], pool.raw_attempts(found, rng) or None
    if args.feedback == "placebo" and (principles or pitfalls):
        return (*placebo_lessons(problem, pool, len(principles), len(pitfalls), rng, world), None)
    return principles, pitfalls, None


def attempt(problem, entry, pool, args, rng, world=None):
    """The intra-sample block of one rollout: the drawn entry's text, or the placebo's."""
    if args.feedback == "placebo" and entry is not None:
        return placebo_attempt(problem, pool, rng, world)
    return entry.attempt if entry is not None else None


def placebo_lessons(problem, pool, n_principles, n_pitfalls, rng, world=None):
    """As many principles and pitfalls as the real lessons had. Tiny world: procedures drawn
    uniformly at random (the right one as likely as any other). Elsewhere: the lessons of random
    *other* problems, not chosen by similarity (experience of the run, but not relevant), taken
    from as many of them as it needs to match both counts (fewer only if the pool has fewer)."""
    if world is not None:
        texts = [W.procedure_text(q) for q in rng.sample(W.PROCEDURES, n_principles + n_pitfalls)]
        return texts[:n_principles], texts[n_principles:]
    others = _other_problems(pool, problem)
    rng.shuffle(others)
    principles, pitfalls = [], []
    for pid in others:
        if len(principles) >= n_principles and len(pitfalls) >= n_pitfalls:
            break
        more_principles, more_pitfalls = pool.lessons([pid])
        principles += [x for x in more_principles if x not in principles]
        pitfalls += [x for x in more_pitfalls if x not in pitfalls]
    return principles[:n_principles], pitfalls[:n_pitfalls]


def placebo_attempt(problem, pool, rng, world=None):
    """Tiny world: this problem's numbers worked by a random procedure. Elsewhere: an attempt
    at a random other problem of the pool."""
    if world is not None:
        return W.solution_text(rng.choice(W.PROCEDURES), *problem["numbers"])
    others = _other_problems(pool, problem)
    return rng.choice(pool.entries[rng.choice(others)]).attempt if others else None


def _other_problems(pool, problem):
    """The pool's problems other than this one, in a fixed order (so the seed decides)."""
    return sorted(pid for pid in pool.entries if pid != problem["id"])


# --- Where the gradient of a feedback-aware response goes -----------------------------------

def scoring_prompts(tok, problems, sampled_prompt_ids, has_context, args):
    """The prompt each response is scored under. `prompt` (the paper): the one it was sampled
    with, log pi(y | x, c). `plain` and `corrected`: the plain prompt, log pi(y | x), an
    off-policy extension (y was drawn from pi(. | x, c)); the rewards stay the same."""
    if args.score_context == "prompt":
        return sampled_prompt_ids
    plain_ids = M.encode_prompts(tok, [prompts.solve_prompt(p["question"]) for p in problems])
    G = args.group_size
    return [plain_ids[i // G] if ctx else ids
            for i, (ids, ctx) in enumerate(zip(sampled_prompt_ids, has_context))]


def weighs_tokens(args) -> bool:
    """Does the loss weigh each token (`corrected`)? It then needs pi_old under the scoring
    prompt, which update() computes with pi_ref."""
    return args.score_context == "corrected"


def importance_weights(model, rollouts, score_ids, chunks, target, args):
    """Per micro-batch, the per-token weight of the loss, or None (the paper; and `plain`,
    which is `corrected` with every weight set to 1: reward-weighted context distillation)."""
    if not weighs_tokens(args):
        return [None] * len(chunks)
    return [off_policy_weight(model, rollouts, score_ids, c, target[j], args)
            for j, c in enumerate(chunks)]


def off_policy_weight(model, rollouts, score_ids, rows, target_logp, args):
    """w_t = min(pi_old(y_t | x, y_<t) / pi_old(y_t | x, c, y_<t), --is-cap) on rows sampled
    under a context, exactly 1 on rows sampled and scored under the same prompt."""
    off = [j for j, i in enumerate(rows) if score_ids[i] != rollouts.prompt_ids[i]]
    w = torch.ones_like(target_logp)
    if off:
        idx = [rows[j] for j in off]
        # the policy that sampled them, pi(. | x, c), scores them once more (no gradient)
        behavior = M.token_logprobs(model, [rollouts.prompt_ids[i] for i in idx],
                                    rollouts.response_ids[idx], rollouts.response_mask[idx],
                                    temperature=args.temperature)
        w[off] = truncated_is_weight(target_logp[off], behavior, args.is_cap)
    return w


def truncated_is_weight(target_logp, behavior_logp, cap: float):
    """w_t = min(pi(y_t | .) / mu(y_t | .), cap), detached. Per token, so each token's
    conditional is corrected, not the prefix that led to it; the cap trades that bias for
    variance. Sources: truncated importance sampling (Ionides 2008), V-trace's truncated
    per-step weights (Espeholt et al. 2018), per-token cap-2 "TIS" (Yao et al. 2025)."""
    if cap <= 0:
        raise ValueError(f"the importance-weight cap must be positive, got {cap}")
    # exp(min(log pi - log mu, log cap)) = min(pi / mu, cap), without overflow
    d = (target_logp.detach() - behavior_logp.detach()).clamp(max=math.log(cap))
    return torch.exp(d)
