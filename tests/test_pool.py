"""The experience pool: cap, reward-agnostic reflection, retrieval that never returns the
problem itself, BM25 scores, the gamma filter, lessons, atomic save/load and the audit."""
import json
import random
from collections import Counter

import numpy as np
import pytest

from support import world as W
from support.errors import UserError
from evaluate import audit
from pool import Entry, Pool, bm25_tokens, parse_summary


def entry(pid, question, reward=0.0, step=0, principles=(), pitfalls=(), family=None,
          attempt=None):
    return Entry(pid, question, attempt or f"attempt of {pid} at {step}", reward, step,
                 list(principles), list(pitfalls), {"family": family} if family else {})


def test_cap_keeps_the_newest_entries():
    pool = Pool(cap_per_problem=32)
    pool.add([entry("p", "q", step=s) for s in range(50)])
    assert len(pool.entries["p"]) == 32
    assert [e.step for e in pool.entries["p"]] == list(range(18, 50))
    pool.add([entry("p", "q", step=50)])
    assert len(pool) == 32 and pool.entries["p"][-1].step == 50


def test_earlier_attempt_is_own_problem_and_reward_agnostic():
    pool = Pool()
    pool.add([entry("p", "q", reward=1.0, attempt="right")] +
             [entry("p", "q", reward=0.0, attempt="wrong")] +
             [entry("other", "q2", attempt="not mine")])
    rng = random.Random(0)
    picks = Counter(pool.earlier_attempt("p", rng).attempt for _ in range(4000))
    assert set(picks) == {"right", "wrong"}
    # uniform over entries, whatever the reward: ~50/50 here
    assert abs(picks["right"] / 4000 - 0.5) < 0.05
    assert pool.earlier_attempt("nobody", rng) is None


def test_retrieval_never_returns_the_problem_itself():
    pool = Pool()
    pool.add([entry("a", "tom has 1 and does lomuf with 2 and 3"),
              entry("b", "ann has 4 and does lomuf with 5 and 6")] +
             [entry(f"c{i}", f"eve has 1 and does dabok{i} with 2 and 3") for i in range(6)])
    found = pool.retrieve("tom has 1 and does lomuf with 2 and 3", exclude_id="a", k=10, gamma=0)
    ids = [pid for pid, _ in found]
    assert "a" not in ids and ids[0] == "b"
    # the identical question of another problem gets similarity 1
    found = pool.retrieve("tom has 1 and does lomuf with 2 and 3", exclude_id="zzz", k=1, gamma=0)
    assert found == [("a", 1.0)]


def test_scores_match_rank_bm25_bit_for_bit_as_the_pool_grows_and_gamma_filters():
    """The incremental index gives rank_bm25's BM25Okapi(epsilon=0) scores exactly, after
    every addition (problems come in batches, some again), and never retrieves itself."""
    from rank_bm25 import BM25Okapi
    world = W.TinyWorld()
    pool = Pool()
    probs = world.problems("rl", "train")[::3] + world.problems("sft", "train")[::7]
    random.Random(0).shuffle(probs)
    for start in range(0, len(probs), 25):
        batch = probs[start:start + 25] + probs[max(0, start - 5):start]   # some seen before
        pool.add([entry(p["id"], p["question"], family=p["family"]) for p in batch])
        seen = list(pool.entries)
        reference = BM25Okapi([bm25_tokens(pool.entries[pid][0].question) for pid in seen],
                              epsilon=0.0)
        for p in probs[:10]:
            toks = bm25_tokens(p["question"])
            assert np.allclose(pool._scores(toks), reference.get_scores(toks), rtol=1e-12, atol=0)
    q = world.problems("rl", "test")[0]
    sims = [s for _, s in pool.retrieve(q["question"], q["id"], k=1000, gamma=0)]
    assert sims == sorted(sims, reverse=True) and max(sims) == 1.0 and 0 < min(sims) <= 1
    kept = pool.retrieve(q["question"], q["id"], k=1000, gamma=0.9)
    assert kept and all(s >= 0.9 for _, s in kept) and len(kept) < len(sims)


def test_digits_are_not_bm25_tokens():
    assert bm25_tokens("Tom has 12 and does LOMUF with 3.5") == ["tom", "has", "and", "does",
                                                                "lomuf", "with"]


def test_lessons_merge_and_prefer_a_stated_principle():
    pool = Pool()
    pool.add([entry("a", "q", principles=["add then mul"], pitfalls=["sub then sub"], step=0),
              entry("a", "q", principles=[], pitfalls=["mul then mul"], step=1),
              entry("b", "q", principles=[], pitfalls=["add then mul", "add then add"])])
    principles, pitfalls = pool.lessons(["a", "b"])
    assert principles == ["add then mul"]
    # a pitfall that is also a principle is dropped; order of first appearance kept
    assert pitfalls == ["sub then sub", "add then add"]


def test_parse_summary():
    assert parse_summary("principles : add then mul pitfalls : sub then add ; mul then mul") == \
        (["add then mul"], ["sub then add", "mul then mul"])
    assert parse_summary("Principles: none\nPitfalls: none") == ([], [])
    assert parse_summary("Principles:\n- check units\n- reread the question\nPitfalls: - "
                         "forgetting the remainder") == (
        ["check units", "reread the question"], ["forgetting the remainder"])
    assert parse_summary("add then mul : 3 + 4 = 7") is None


def test_save_load_roundtrip_and_atomicity(tmp_path):
    pool = Pool()
    pool.add([entry(f"p{i}", f"question {i}", reward=i % 2, principles=["x"], family="lomuf")
              for i in range(10)])
    path = tmp_path / "pool.jsonl"
    pool.save(str(path))
    assert not (tmp_path / "pool.jsonl.tmp").exists()
    back = Pool.load(str(path))
    assert [vars(e) for v in back.entries.values() for e in v] == \
        [vars(e) for v in pool.entries.values() for e in v]


def test_load_bad_line_names_it(tmp_path):
    path = tmp_path / "pool.jsonl"
    good = json.dumps(vars(entry("a", "q")))
    path.write_text(good + "\n{not json\n")
    with pytest.raises(UserError, match=r"pool.jsonl line 2"):
        Pool.load(str(path))
    with pytest.raises(UserError, match="cannot read"):
        Pool.load(str(tmp_path / "missing.jsonl"))


def test_audit_reports_ground_truth(capsys):
    world = W.TinyWorld()
    probs = world.problems("rl", "train")
    pool = Pool()
    for p in probs:
        fam = world.by_name[p["family"]]
        # right principle for the first family's problems, wrong for the others
        principle = fam.principle if p["family"] == probs[0]["family"] else "sub then sub" \
            if fam.principle != "sub then sub" else "add then add"
        pool.add([entry(p["id"], p["question"], principles=[principle], family=p["family"])])
    stats = audit(pool, gamma=0.9, k=4, n_samples=2, seed=0)
    n_first = sum(p["family"] == probs[0]["family"] for p in probs)
    assert stats["problems"] == len(probs)
    assert stats["retrieval_precision"] == 1.0
    assert stats["summary_correct_when_stated"] == pytest.approx(n_first / len(probs))
    assert "attempt:" in capsys.readouterr().out


def test_audit_reads_a_running_runs_checkpoint_pool(tmp_path, capsys):
    """`python evaluate.py audit RUN_DIR`: a finished run's pool.jsonl, else (a run still
    going) its last checkpoint's; nothing there is a clear error."""
    import evaluate
    from support import rundir
    ckpt = tmp_path / "rl" / rundir.CHECKPOINT
    ckpt.mkdir(parents=True)
    pool = Pool()
    pool.add([entry("q1", "what is add then add", reward=1.0), entry("q2", "other text")])
    pool.save(str(ckpt / "pool.jsonl"))
    evaluate.main(["audit", str(tmp_path / "rl"), "--samples", "1"])
    out = capsys.readouterr().out
    assert f"pool: {ckpt / 'pool.jsonl'}" in out and "entries: 2" in out
    with pytest.raises(UserError, match="no pool at"):
        evaluate.main(["audit", str(tmp_path / "nothing")])


def test_retrieval_speed_with_tens_of_thousands_of_problems():
    """20,000 questions over 3,000 letter-only words (they survive bm25_tokens): every query
    is really scored, returns the top BM25 matches of rank_bm25's get_scores, and is fast."""
    import time
    from rank_bm25 import BM25Okapi
    rng = random.Random(0)
    words = sorted({"".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)) for _ in range(3000)})
    questions = [" ".join(rng.choices(words, k=12)) for _ in range(20000)]
    pool = Pool()
    pool.add([entry(f"p{i}", q) for i, q in enumerate(questions)])
    queries = [" ".join(rng.choices(words, k=12)) for _ in range(20)]
    pool.retrieve(queries[0], "x")   # builds the index
    t = time.perf_counter()
    found = [pool.retrieve(q, "x", k=4, gamma=0.0) for q in queries]
    per_query = (time.perf_counter() - t) / len(queries)
    assert per_query < 0.01, per_query   # about 0.2 ms here; rank_bm25.get_scores takes 50 ms
    bm25 = BM25Okapi([bm25_tokens(q) for q in questions])
    for q, got in zip(queries[:5], found):
        scores = bm25.get_scores(bm25_tokens(q))
        ceiling = pool.index.ceiling(bm25_tokens(q))
        assert len(got) == 4 and ceiling > scores.max() > 0
        # the four best scores, most similar first, each similarity its score / a perfect match's
        assert np.allclose([s for _, s in got], np.sort(scores)[::-1][:4] / ceiling)
        assert np.allclose([scores[int(pid[1:])] / ceiling for pid, _ in got],
                           [s for _, s in got])
