"""The tiny world: deterministic, families as designed, numbers that carry no procedure, splits
that share families but not problems, designed start rates in the SFT data, a tokenizer that
round-trips, and diagnostics that agree with the truth."""
import random
from collections import Counter

import pytest

from support import config
from support import data
import prompts
from support import curriculum
from support import world as W
from pool import Entry, Pool
from reward import reward

WORLD = W.TinyWorld()


def test_world_is_deterministic_and_families_are_distinct():
    a, b = W.TinyWorld(), W.TinyWorld()
    assert a.families == b.families and a.problems("rl", "test") == b.problems("rl", "test")
    kinds = {k: a.families_of(k) for k in ("sft", "rl", "unseen")}
    assert [len(v) for v in kinds.values()] == [18, 9, 9]
    names = [f.name for f in a.families] + a.fresh_names
    assert len(set(names)) == len(names)
    # every procedure is taught by sft families and learned by exactly one rl family
    assert {f.procedure for f in kinds["sft"]} == set(W.PROCEDURES)
    assert sorted(f.procedure for f in kinds["rl"]) == sorted(W.PROCEDURES)


def test_numbers_carry_no_procedure():
    """Every problem's numbers are valid for all nine procedures, which give nine different
    answers, and every family draws from the same numbers: only the name decides."""
    for kind in ("sft", "rl", "unseen"):
        for split in ("train", "test") if kind == "rl" else ("test",):
            for p in WORLD.problems(kind, split):
                t = tuple(p["numbers"])
                assert t in WORLD.numbers
                results = [W.run_procedure(q, *t) for q in W.PROCEDURES]
                assert all(0 <= v <= W.MAX_VALUE for r in results for v in r)
                assert len({r2 for _, r2 in results}) == 9
    # which numbers a family's test problems use is independent of its procedure: every rl
    # family's test numbers come from the one shared list
    used = Counter(tuple(p["numbers"]) for p in WORLD.problems("rl", "test"))
    assert len(used) > 40


def test_splits_share_families_not_problems():
    train, test = WORLD.problems("rl", "train"), WORLD.problems("rl", "test")
    assert {p["family"] for p in train} == {p["family"] for p in test}
    key = lambda p: (p["family"], tuple(p["numbers"]))   # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in test}
    assert len({p["id"] for p in train + test}) == len(train + test)
    # SFT never uses a family's test numbers with its name
    for f in WORLD.families:
        test_nums = {tuple(p["numbers"]) for p in WORLD.problems(f.kind, "test")
                     if p["family"] == f.name}
        assert test_nums and not test_nums & set(WORLD.sft_numbers(f.name))


def test_only_the_true_procedure_reaches_the_answer():
    for p in WORLD.problems("rl", "test") + WORLD.problems("sft", "test"):
        true = WORLD.by_name[p["family"]].procedure
        assert reward(WORLD.solution(p), p["answer"]) == 1.0
        for proc in W.PROCEDURES:
            if proc != true:
                assert reward(W.solution_text(proc, *p["numbers"]), p["answer"]) == 0.0


def test_question_never_contains_the_procedure():
    for p in WORLD.problems("rl", "test"):
        assert not W.parse_procedures(p["question"])
        assert WORLD.family_of(p["question"]).name == p["family"]


def test_rl_families_have_a_ladder_of_start_rates_and_distinct_pitfalls():
    rl = WORLD.families_of("rl")
    assert sorted(f.start_rate for f in rl) == sorted(W.RL_START_RATES)
    assert all(f.pitfall != f.procedure for f in rl)
    assert sorted(f.pitfall for f in rl) == sorted(W.PROCEDURES)   # each procedure once
    for f in rl:
        prior = WORLD.rl_prior(f)
        assert sum(prior.values()) == pytest.approx(1.0)
        assert prior[f.procedure] == f.start_rate and prior[f.pitfall] == W.PITFALL_SHARE


def test_seed_data_teaches_rl_families_at_their_designed_rate():
    """Plain prompts with an rl family's name follow its right procedure at exactly its start
    rate and its pitfall at PITFALL_SHARE (dealt from a deck, not drawn)."""
    n_rl = 9 * curriculum.DECK
    exs = curriculum.tiny_seed_data(WORLD, round(n_rl / curriculum.TINY_MIX["solve_rl"] * 1.3), 3,
                             list(curriculum.SKILLS))
    by_family = {}
    for ex in exs:
        if ex["skill"] == "solve_rl":
            (name,) = set(ex["prompt"].split()) & {f.name for f in WORLD.families_of("rl")}
            by_family.setdefault(name, []).append(W.parse_procedures(ex["response"])[0])
    for f in WORLD.families_of("rl"):
        picks = by_family[f.name][:curriculum.DECK]
        assert len(picks) == curriculum.DECK
        assert picks.count(f.procedure) == round(f.start_rate * curriculum.DECK)
        assert picks.count(f.pitfall) == round(W.PITFALL_SHARE * curriculum.DECK)


def test_seed_data_never_shows_unseen_families_plainly():
    """Unseen names appear in SFT only as context names, whose procedure is random: never in
    a plain prompt, and with their true procedure no more often than chance (1/9)."""
    unseen = {f.name: f for f in WORLD.families_of("unseen")}
    true_hits, uses = 0, 0
    for ex in curriculum.tiny_seed_data(WORLD, 20000, 1, list(curriculum.SKILLS)):
        names = set(ex["prompt"].split()) & set(unseen)
        if not names:
            continue
        assert ex["skill"] not in ("solve", "solve_rl", "inter_known")
        assert "Lessons" in ex["prompt"] or "Attempt" in ex["prompt"]
        (name,) = names
        if ex["skill"] != "summarize":
            uses += 1
            true_hits += W.parse_procedures(ex["response"])[0] == unseen[name].procedure
    assert uses > 200
    assert abs(true_hits / uses - 1 / 9) < 0.05


def test_seed_prompts_never_contain_their_answer():
    """The gold answer lives only in the response of a solve/reflect example. A prompt may hold
    an earlier *attempt* (which can be right), so we check the prompts that have no attempt."""
    for ex in curriculum.tiny_seed_data(WORLD, 2000, 2, list(curriculum.SKILLS)):
        if ex["skill"] in ("solve", "solve_rl", "inter_fresh", "inter_pitfalls", "inter_known"):
            answer = ex["response"].split("####")[-1].strip()
            assert "####" not in ex["prompt"].split("Problem:")[-1]
            assert f"= {answer}" not in ex["prompt"]


def test_summary_judge():
    fam = WORLD.families_of("rl")[0]
    other = next(p for p in W.PROCEDURES if p != fam.procedure)
    assert WORLD.summary_is_correct(fam.name, [fam.principle])
    assert not WORLD.summary_is_correct(fam.name, [W.procedure_text(other)])
    assert not WORLD.summary_is_correct(fam.name, [fam.principle, W.procedure_text(other)])
    assert not WORLD.summary_is_correct(fam.name, [])


def test_tokenizer_roundtrip_and_covers_every_prompt(tmp_path):
    from transformers import AutoTokenizer
    tok = W.tiny_tokenizer(WORLD)
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert W.is_tiny_tokenizer(back, WORLD)
    for ex in curriculum.tiny_seed_data(WORLD, 300, 0, list(curriculum.SKILLS)):
        for text in (prompts.PLAIN_FORMAT.format(prompt=ex["prompt"]), ex["response"]):
            ids = tok(text).input_ids
            assert tok.unk_token_id not in ids, text
            assert back(text).input_ids == ids
    sol = WORLD.solution(WORLD.problems("rl", "test")[0])
    assert tok.decode(tok(sol).input_ids) == sol


# --- diagnostics against hand-made truths ---------------------------------------------------

def _pool_of(problems):
    pool = Pool()
    pool.add([Entry(p["id"], p["question"], "x", 0.0, 0, meta={"family": p["family"]})
              for p in problems])
    return pool


def test_language_channel_precision_recall_and_summaries():
    probs = WORLD.problems("rl", "train")
    q1, q2 = probs[0], next(p for p in probs if p["family"] != probs[0]["family"])
    same = [p for p in probs if p["family"] == q1["family"] and p["id"] != q1["id"]][:3]
    other = [p for p in probs if p["family"] not in (q1["family"], q2["family"])][:5]
    pool = _pool_of(same + other)
    # q1 retrieved 3 siblings and 1 other; q2's family has nothing in the pool
    retrieved = [[p["id"] for p in same] + [other[0]["id"]], [other[1]["id"]]]
    right = [WORLD.by_name[q["family"]].principle for q in (q1, q2)]
    summaries = [([right[0]], []), ([right[0]], [])]          # the second one is wrong
    rewards = [1.0, 0.0, 0.0, 0.0]                            # G = 2: q1 had a right attempt
    m = WORLD.language_channel([q1, q2], retrieved, summaries, rewards, 2, pool, step=1)
    assert m["retrieval_precision"] == 3 / 5
    assert m["retrieval_recall"] == 1.0          # only q1 could retrieve a sibling, and did
    assert m["summary_correct"] == 0.5 and m["summary_correct_given_right"] == 1.0
    m = WORLD.language_channel([q1, q2], [[], []], None, rewards, 2, pool, step=1)
    assert m["retrieval_recall"] == 0.0 and m["summary_correct"] is None
    m = WORLD.language_channel([q1, q2], None, None, rewards, 2, pool, step=1)   # no retrieval
    assert m["retrieval_recall"] is None and m["retrieval_precision"] is None


def test_rl_train_accuracy_splits_by_family_and_rollout_kind():
    rl, sft_p = WORLD.problems("rl", "train")[0], WORLD.problems("sft", "train")[0]
    rewards = [1.0, 0.0, 1.0, 1.0] + [1.0, 1.0, 1.0, 1.0]   # G = 4: the rl group, the sft group
    has_context = [True, True, False, False] * 2
    acc = WORLD.rl_train_accuracy([rl, sft_p], rewards, has_context, 4)
    assert acc == {"train_acc_rl_plain": 1.0, "train_acc_rl_feedback": 0.5}


def test_per_family_accuracy():
    probs = WORLD.problems("rl", "test")
    fams = [f.name for f in WORLD.families_of("rl")]
    correct = [float(p["family"] == fams[0]) for p in probs]
    acc = WORLD.per_family(probs, correct)
    assert acc[fams[0]] == 1.0 and all(acc[f] == 0.0 for f in fams[1:])


def test_gamma_separates_siblings_from_other_families():
    """With the similarity on an absolute scale, the default gamma of the tiny preset keeps
    siblings and refuses other families, and an unseen family's query retrieves nothing."""
    gamma = config.PRESETS["tiny"]["gamma"]
    pool = _pool_of(data.train_problems("tiny"))
    for kind in ("rl", "sft"):
        for q in WORLD.problems(kind, "test")[::7]:
            found = pool.retrieve(q["question"], q["id"], k=4, gamma=gamma)
            assert len(found) == 4
            assert all(pool.entries[pid][0].meta["family"] == q["family"] for pid, _ in found)
    for q in WORLD.problems("unseen", "test"):
        assert pool.retrieve(q["question"], q["id"], k=4, gamma=gamma) == []
        assert pool.retrieve(q["question"], q["id"], k=4, gamma=0.0)   # unfiltered: the top-k


def test_nonce_names_follow_their_consonants():
    rng = random.Random(0)
    names = W._nonce_names("flmnrs", 20, rng, set())
    assert all(len(n) == 5 and n[0] in "flmnrs" and n[1] in "aeiou" for n in names)
