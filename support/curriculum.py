"""The tiny world's SFT curriculum: seed examples for the three skills LANPO needs.

The paper seeds RL with about 3K examples of three skills: summarize experience, inspect an
earlier attempt, respond (with or without feedback). On the tiny world they are generated from
the world's ground truth (world.py): sft families are taught; each rl family appears only in
plain problems whose procedure follows the prior the world designed for it (trained as a soft
target, so every SFT seed leaves it at its start rate); and the model learns to read context on
*fresh* nonce names, whose meaning only the feedback gives, as an rl family's is early in RL.
The gold answer only ever appears in a response.
"""
import random

import prompts
from support import world as W

# The kinds of tiny seed examples and their share of the data. Each teaches one skill.
#   solve           plain prompt, an sft family -> its solution                       (respond)
#   solve_rl        plain prompt, an rl family -> a solution whose procedure is drawn from the
#                   family's designed prior (world.rl_prior: the right one at its start rate):
#                   what SFT leaves each rl family with is designed, not drawn
#   inter_fresh     a fresh name + the right principle (and some pitfalls) -> follow it (respond
#                   with feedback: this is what lets a principle in the pool reach an rl family)
#   inter_pitfalls  a fresh name + pitfalls only -> a procedure not among them (exploration
#                   guided by language: rule out what failed)
#   inter_known     an sft family + feedback, sometimes misleading -> its own rule (feedback
#                   must not override what the model knows)
#   reflect         an earlier attempt at this problem (right, or with a slip; on sft families
#                   also a wrong procedure) -> the correct solution                 (inspect)
#   inter_intra     both blocks at once -> follow the principle
#   summarize       a problem's attempts marked right/wrong -> principles and pitfalls
TINY_MIX = {"solve": 0.19, "solve_rl": 0.126, "inter_fresh": 0.18, "inter_pitfalls": 0.08,
            "inter_known": 0.06, "reflect": 0.11, "inter_intra": 0.05, "summarize": 0.204}
# Which kinds each --skills name switches on (the "no skill seeding" ablation keeps only solve).
SKILLS = {"solve": ["solve", "solve_rl"],
          "feedback": ["inter_fresh", "inter_pitfalls", "inter_known", "inter_intra"],
          "reflect": ["reflect"], "summarize": ["summarize"]}
# solve_rl examples are dealt from a deck per rl family, so that each family's shares are exact
# (not a draw): 140 cards hold every share of world.rl_prior as a whole number of cards.
DECK = 140


def rl_deck(world: W.TinyWorld, family: W.Family, rng: random.Random) -> list:
    """DECK procedures in the exact proportions of the family's designed prior, shuffled."""
    cards = [p for p, share in world.rl_prior(family).items() for _ in range(round(share * DECK))]
    assert len(cards) == DECK, (family, len(cards))
    rng.shuffle(cards)
    return cards


def tiny_example(world: W.TinyWorld, kind: str, rng: random.Random, rl_pick=None) -> dict:
    """One seed example {prompt, response, skill} of the given kind. An rl family's name appears
    only in solve_rl (with `rl_pick` = (family, procedure) dealt from its deck, and the family's
    designed prior as the soft target of the procedure token); an unseen name only as a context
    name with a random procedure. The gold answer only ever appears in the response."""
    procs = W.PROCEDURES
    text = W.procedure_text
    if kind == "solve_rl":
        family, proc = rl_pick
        a, b, c = rng.choice(world.sft_numbers(family.name))
        question = world.question(family.name, rng.choice(W.PERSONS), a, b, c)
        return {"prompt": prompts.solve_prompt(question),
                "response": W.solution_text(proc, a, b, c), "skill": kind,
                "procedure_prior": {text(p): share for p, share in
                                    world.rl_prior(family).items()}}
    known = rng.choice(world.families_of("sft"))
    fresh_proc = rng.choice(procs)
    use_fresh = kind in ("inter_fresh", "inter_pitfalls", "inter_intra") or (
        kind in ("reflect", "summarize") and rng.random() < 0.5)
    name, proc = (rng.choice(world.context_names), fresh_proc) if use_fresh else (known.name,
                                                                                known.procedure)
    a, b, c = rng.choice(world.sft_numbers(name))
    question = world.question(name, rng.choice(W.PERSONS), a, b, c)
    solution = W.solution_text(proc, a, b, c)
    wrong = [p for p in procs if p != proc]

    def attempt(allow_wrong_procedure: bool) -> str:
        r = rng.random()
        if r < 0.4:
            return solution
        if r < 0.7 or not allow_wrong_procedure:
            return W.solution_text(proc, a, b, c, slip=rng.choice([-2, -1, 1, 2]))
        return W.solution_text(rng.choice(wrong), a, b, c)

    if kind == "solve":
        prompt = prompts.solve_prompt(question)
    elif kind == "inter_fresh":
        pitfalls = [text(p) for p in rng.sample(wrong, rng.randint(0, 2))]
        prompt = prompts.feedback_prompt(question, [text(proc)], pitfalls)
    elif kind == "inter_pitfalls":
        pitfalls = [text(p) for p in rng.sample(wrong, rng.randint(1, 4))]
        return {"prompt": prompts.feedback_prompt(question, [], pitfalls), "response": solution,
                "skill": kind, "avoid": pitfalls}
    elif kind == "inter_known":
        principle = proc if rng.random() < 0.7 else rng.choice(wrong)
        pitfalls = [text(p) for p in rng.sample([p for p in procs if p != principle],
                                                rng.randint(0, 2))]
        prompt = prompts.feedback_prompt(question, [text(principle)], pitfalls)
    elif kind == "reflect":
        prompt = prompts.feedback_prompt(question, attempt=attempt(not use_fresh))
    elif kind == "inter_intra":
        prompt = prompts.feedback_prompt(question, [text(proc)], [],
                                         attempt=attempt(allow_wrong_procedure=True))
    elif kind == "summarize":
        # 1-4 distinct attempts with outcomes, as train.py shows them: at most one right one (a
        # problem's right attempts are all the same text, and duplicates are dropped) and wrong
        # ones that each follow a different wrong procedure.
        n_right = rng.randint(0, 1)
        attempts = [(solution, True)] * n_right + [
            (W.solution_text(p, a, b, c), False)
            for p in rng.sample(wrong, rng.randint(1 - n_right, 3))]
        rng.shuffle(attempts)
        prompt = prompts.summarize_prompt(question, attempts)
        principles = [text(proc)] if n_right else []
        pitfalls = []
        for t, ok in attempts:
            p = text(W.parse_procedures(t)[0])
            if not ok and p not in pitfalls:
                pitfalls.append(p)
        return {"prompt": prompt, "response": prompts.summary_text(principles, pitfalls),
                "skill": kind}
    else:
        raise ValueError(kind)
    return {"prompt": prompt, "response": solution, "skill": kind}


def tiny_seed_data(world: W.TinyWorld, n: int, seed: int, skills: list[str]) -> list[dict]:
    """n seed examples of the chosen skills, in the TINY_MIX proportions. solve_rl examples
    cycle through the rl families in turn, each dealing the next card of its own deck."""
    kinds = [k for s in skills for k in SKILLS[s]]
    weights = [TINY_MIX[k] for k in kinds]
    rng = random.Random(seed)
    rl = world.families_of("rl")
    decks = {f.name: rl_deck(world, f, rng) for f in rl}
    out, dealt = [], 0
    for kind in rng.choices(kinds, weights, k=n):
        pick = None
        if kind == "solve_rl":
            family = rl[dealt % len(rl)]
            pick = (family, decks[family.name][(dealt // len(rl)) % DECK])
            dealt += 1
        out.append(tiny_example(world, kind, rng, pick))
    return out
