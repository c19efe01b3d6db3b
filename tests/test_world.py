"""The tiny world: deterministic, families as designed, splits that share families but not
problems, answers that only the true procedure reaches, and a tokenizer that round-trips."""
import random

import data
import prompts
import sft
from reward import reward


def test_world_is_deterministic_and_families_are_distinct():
    a, b = data.TinyWorld(), data.TinyWorld()
    assert a.families == b.families and a.problems("rl", "test") == b.problems("rl", "test")
    kinds = {k: a.families_of(k) for k in ("sft", "rl", "unseen")}
    assert [len(v) for v in kinds.values()] == [18, 9, 9]
    names = [f.name for f in a.families] + a.fresh_names
    assert len(set(names)) == len(names)
    # every rl family's procedure is one that SFT families teach (the model can execute it)
    taught = {f.procedure for f in kinds["sft"]}
    assert all(f.procedure in taught for f in kinds["rl"])


def test_splits_share_families_not_problems():
    w = data.TinyWorld()
    train, test = w.problems("rl", "train"), w.problems("rl", "test")
    assert {p["family"] for p in train} == {p["family"] for p in test}
    key = lambda p: (p["family"], tuple(p["numbers"]))
    assert not {key(p) for p in train} & {key(p) for p in test}
    assert len({p["id"] for p in train + test}) == len(train + test)
    # SFT never uses the numbers of any test problem
    for f in w.families_of("sft"):
        sft_nums = set(w.sft_numbers(f.procedure))
        assert not sft_nums & {tuple(p["numbers"]) for p in test if
                               w.by_name[p["family"]].procedure == f.procedure}


def test_only_the_true_procedure_reaches_the_answer():
    w = data.TinyWorld()
    for p in w.problems("rl", "test") + w.problems("sft", "test"):
        true = w.by_name[p["family"]].procedure
        assert reward(w.solution(p), p["answer"]) == 1.0
        assert 0 <= int(p["answer"]) <= data.MAX_VALUE
        for proc in data.PROCEDURES:
            if proc != true:
                wrong = data.solution_text(proc, *p["numbers"])
                assert reward(wrong, p["answer"]) == 0.0


def test_question_never_contains_the_procedure_or_answer_words():
    w = data.TinyWorld()
    for p in w.problems("rl", "test"):
        assert not data.parse_procedures(p["question"])
        assert w.family_of(p["question"]).name == p["family"]


def test_summary_judge():
    w = data.TinyWorld()
    fam = w.families_of("rl")[0]
    other = next(p for p in data.PROCEDURES if p != fam.procedure)
    assert w.summary_is_correct(fam.name, [fam.principle])
    assert not w.summary_is_correct(fam.name, [data.procedure_text(other)])
    assert not w.summary_is_correct(fam.name, [fam.principle, data.procedure_text(other)])
    assert not w.summary_is_correct(fam.name, [])


def test_tokenizer_roundtrip_and_covers_every_prompt(tmp_path):
    from transformers import AutoTokenizer
    w = data.TinyWorld()
    tok = data.tiny_tokenizer(w)
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    examples = sft.tiny_seed_data(w, 300, 0, list(sft.SKILLS))
    for ex in examples:
        for text in (prompts.PLAIN_FORMAT.format(prompt=ex["prompt"]), ex["response"]):
            ids = tok(text).input_ids
            assert tok.unk_token_id not in ids, text
            assert back(text).input_ids == ids
    sol = w.solution(w.problems("rl", "test")[0])
    assert tok.decode(tok(sol).input_ids) == sol


def test_seed_data_teaches_nothing_about_rl_or_unseen_families():
    """Held-out names appear in SFT only as context names, whose procedure is random: never in
    a plain prompt, and with their true procedure no more often than chance (1/9)."""
    w = data.TinyWorld()
    hidden = {f.name: f for f in w.families if f.kind != "sft"}
    true_hits, uses = 0, 0
    for ex in sft.tiny_seed_data(w, 20000, 1, list(sft.SKILLS)):
        names = set(ex["prompt"].split()) & set(hidden)
        if not names:
            continue
        assert ex["skill"] not in ("solve", "inter_known")
        assert "Lessons" in ex["prompt"] or "Attempt" in ex["prompt"]
        (name,) = names
        if ex["skill"] != "summarize":
            uses += 1
            true_hits += data.parse_procedures(ex["response"])[0] == hidden[name].procedure
    assert uses > 500
    assert abs(true_hits / uses - 1 / 9) < 0.04


def test_seed_prompts_never_contain_their_answer():
    """The gold answer lives only in the response of a solve/reflect example. A prompt may hold
    an earlier *attempt* (which can be right), so we check the prompts that have no attempt."""
    w = data.TinyWorld()
    for ex in sft.tiny_seed_data(w, 2000, 2, list(sft.SKILLS)):
        if ex["skill"] in ("solve", "inter_fresh", "inter_pitfalls", "inter_known"):
            answer = ex["response"].split("####")[-1].strip()
            assert "####" not in ex["prompt"].split("Problem:")[-1]
            assert f"= {answer}" not in ex["prompt"]
