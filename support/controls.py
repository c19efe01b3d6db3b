"""The controls and extensions beside the paper's path, in one seam.

train.py follows the paper: contexts c from the pool, every response scored under the prompt it
was sampled with, log pi(y | x, c). The controls change one of three things, and only here:
- a context's content (`ControlContexts`, chosen once by `make` in train.py's main in place of
  the paper's pool.Contexts): `--feedback placebo` (the blocks and counts of `both`, with
  content that carries no experience of the run: guessed procedures in the tiny world,
  elsewhere a bank of lessons the starting model wrote before RL about problems outside the
  run), `oracle` (tiny world: the family's true rule), `--inter-format raw` (retrieved
  attempts, not lessons) and `--reflection leaky` (a failed attempt, announced as wrong);
- the prompt a feedback-aware response is scored under: `--score-context plain|corrected`;
- each token's weight in the loss: the truncated importance weight of `corrected`.
With the defaults `make` returns the paper's contexts and every other function here hands the
paper's values back unchanged, so a reader of the paper can skip this file.
"""
import json
import math
import os

import torch

import prompts
from pool import Contexts, Lessons
from reward import reward
from support import data, ranks
from support import model as M
from support import world as W
from support.errors import UserError

LESSON_FEEDBACK = ("inter", "both", "placebo")    # --feedback values with an inter-sample block
ATTEMPT_FEEDBACK = ("intra", "both", "placebo")   # ... and with an intra-sample block


def inter_sample(args) -> bool:
    """Does the run retrieve other problems' lessons (Relevant Abstraction, or its placebo)?"""
    return args.p_feedback > 0 and args.feedback in LESSON_FEEDBACK


def intra_sample(args) -> bool:
    """Does the run show earlier attempts at the same problem (Reward-Agnostic Reflection)?"""
    return args.p_feedback > 0 and args.feedback in ATTEMPT_FEEDBACK


# --- What a context holds -------------------------------------------------------------------

def make(args, pool, world=None, bank=None):
    """The contexts a run shows, chosen once: the paper's (pool.Contexts), or a control's."""
    paper = dict(top_k=args.top_k, gamma=args.gamma, lessons=inter_sample(args),
                 attempts=intra_sample(args))
    if args.feedback in ("placebo", "oracle") or args.inter_format == "raw" \
            or args.reflection == "leaky":
        return ControlContexts(pool, args, world, bank, **paper)
    return Contexts(pool, **paper)


class ControlContexts(Contexts):
    """The paper's contexts with one thing changed: the content of a block (`--feedback
    placebo`: the same blocks and counts, content without the run's experience; `oracle`: the
    family's true rule; `--inter-format raw`: the retrieved attempts, not their lessons), or
    which attempt is drawn (`--reflection leaky`: a failed one, and the prompt says so)."""

    def __init__(self, pool, args, world, bank, **paper):
        super().__init__(pool, **paper)
        self.feedback, self.raw_format = args.feedback, args.inter_format == "raw"
        self.leaky = args.reflection == "leaky"
        self.world, self.bank = world, bank

    def lessons(self, problem, rng):
        real = super().lessons(problem, rng)
        if self.feedback == "oracle":   # the family's true rule: is the summary the bottleneck?
            return Lessons(real.found, [self.world.oracle_principle(problem)], [])
        if self.raw_format:             # ablation: the retrieved attempts, not distilled
            return Lessons(real.found, [], [], self.pool.raw_attempts(real.found, rng) or None)
        if self.feedback == "placebo" and (real.principles or real.pitfalls):
            return Lessons(real.found, *placebo_lessons(problem, self.pool, len(real.principles),
                                                        len(real.pitfalls), rng, self.world,
                                                        self.bank))
        return real

    def earlier_entry(self, problem, rng):
        if not self.with_attempts:
            return None
        return self.pool.earlier_attempt(problem["id"], rng, failed_only=self.leaky)

    def attempt(self, problem, rng):
        entry = self.earlier_entry(problem, rng)
        if self.feedback == "placebo" and entry is not None:
            return placebo_attempt(problem, self.pool, rng, self.world, self.bank)
        return entry.attempt if entry is not None else None


def placebo_lessons(problem, pool, n_principles, n_pitfalls, rng, world=None, bank=None):
    """As many principles and pitfalls as the real lessons had. Tiny world: procedures drawn
    uniformly at random (the right one as likely as any other). With a bank (--placebo-from
    prior): lessons the starting model wrote before RL about problems outside the run, drawn at
    random (no experience of the run, no relevance). Else (--placebo-from pool): the lessons of
    random *other* problems of the pool, not chosen by similarity (experience of the run, but
    not relevant), from as many of them as it needs to match both counts (repeats only when
    the whole pool holds fewer; none only when it holds none)."""
    if world is not None:
        texts = [W.procedure_text(q) for q in rng.sample(W.PROCEDURES, n_principles + n_pitfalls)]
        return texts[:n_principles], texts[n_principles:]
    if bank is not None:
        return _draw(bank["principles"], n_principles, rng), _draw(bank["pitfalls"], n_pitfalls,
                                                                   rng)
    others = _other_problems(pool, problem)
    rng.shuffle(others)
    principles, pitfalls = [], []
    for pid in others:
        if len(principles) >= n_principles and len(pitfalls) >= n_pitfalls:
            break
        more_principles, more_pitfalls = pool.lessons([pid])
        principles += [x for x in more_principles if x not in principles]
        pitfalls += [x for x in more_pitfalls if x not in pitfalls]
    return _fill(principles, n_principles, rng), _fill(pitfalls, n_pitfalls, rng)


def placebo_attempt(problem, pool, rng, world=None, bank=None):
    """Tiny world: this problem's numbers worked by a random procedure. With a bank: one of the
    starting model's attempts at a problem outside the run. Else: an attempt at a random other
    problem of the pool."""
    if world is not None:
        return W.solution_text(rng.choice(W.PROCEDURES), *problem["numbers"])
    if bank is not None:
        return rng.choice(bank["attempts"])
    others = _other_problems(pool, problem)
    return rng.choice(pool.entries[rng.choice(others)]).attempt if others else None


def _other_problems(pool, problem):
    """The pool's problems other than this one, in a fixed order (so the seed decides)."""
    return sorted(pid for pid in pool.entries if pid != problem["id"])


def _fill(items, n, rng):
    """The first n items; when there are fewer, repeats of them drawn at random make up n."""
    return items[:n] + (_draw(items, n - len(items), rng) if 0 < len(items) < n else [])


def _draw(items, n, rng):
    """n of the items, at random: all different while there are enough, then again from the
    top, so the count always matches the real context's."""
    out = []
    while len(out) < n:
        out += rng.sample(items, min(n - len(out), len(items)))
    return out


# --- The real-data placebo's bank: lessons written before RL ---------------------------------

BANK_FILE = "placebo_bank.json"


def placebo_problems(args, train_set, eval_sets):
    """The problems a --placebo-from prior bank is written about ([] for any other run), read
    and checked (outside the training and test sets) before anything is written."""
    if getattr(args, "placebo_from", None) != "prior":
        return []
    return data.placebo_problems(args.placebo_data, args.placebo_problems, train_set, eval_sets)


def placebo_bank(run, start, model, tok, bank_problems, args, rng, summarize):
    """--placebo-from prior: the lessons and attempts the starting model writes, before any RL
    step, about problems outside the training and test sets, made the way the run makes its
    pool's (G rollouts per problem, graded, one summary per group by `summarize`). The run
    directory keeps it, so a resumed run draws from the same bank. None for any other run."""
    if getattr(args, "placebo_from", None) != "prior":
        return None
    path = os.path.join(args.run_dir, BANK_FILE)
    if start > 0:   # a resumed run: the bank it started with
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise UserError(f"--resume: {path} is missing (the placebo's bank, written when "
                            "the run started); start the run again with --overwrite") from None
    G, mine = args.group_size, ranks.share(bank_problems)   # N ranks: each solves its share
    plain = [prompts.solve_prompt(p["question"]) for p in mine for _ in range(G)]
    out = M.sample(model, tok, plain, n=1, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p,
                   micro_batch=args.sample_micro_batch)
    rewards = [reward(y, mine[i // G]["answer"]) for i, y in enumerate(out.texts)]
    summaries = summarize(model, tok, mine, out.texts, rewards, args, rng) or []
    parts = ranks.gather_objects((out.texts, summaries), "the placebo's bank")
    bank = {"problems": [p["id"] for p in bank_problems], "attempts": [], "principles": [],
            "pitfalls": []}
    for texts, sums in parts:
        bank["attempts"] += texts
        for principles, pitfalls in filter(None, sums):
            bank["principles"] += [x for x in principles if x not in bank["principles"]]
            bank["pitfalls"] += [x for x in pitfalls if x not in bank["pitfalls"]]
    empty = [k for k in ("principles", "pitfalls") if not bank[k]]
    if empty:
        raise UserError(f"the starting model wrote no {' and no '.join(empty)} about the "
                        f"{len(bank_problems)} problems of --placebo-data {args.placebo_data}: "
                        "raise --placebo-problems, or pass --placebo-from pool")
    if run.main:
        run.write_json(BANK_FILE, bank)
    run.say(f"placebo bank: {len(bank['principles'])} principles, {len(bank['pitfalls'])} "
            f"pitfalls and {len(bank['attempts'])} attempts, written by the starting model about "
            f"{len(bank_problems)} problems of {args.placebo_data}")
    return bank


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
