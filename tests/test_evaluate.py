"""Evaluation: the unbiased pass@k, and each of the three modes end to end on a tiny model."""
import argparse
import json
import math

import pytest

import data
import evaluate as E
from errors import UserError
from pool import Entry, Pool

WORLD = data.TinyWorld()


def closed_form(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n,c,k", [(5, 2, 1), (5, 2, 2), (5, 0, 3), (5, 5, 1), (10, 3, 4),
                                   (16, 1, 8), (8, 7, 8)])
def test_pass_at_k_matches_the_closed_form(n, c, k):
    assert E.pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k))
    assert E.pass_at_k(n, c, 1) == pytest.approx(c / n)


def cfg(**kw):
    base = dict(greedy=None, temperature=1.0, top_p=1.0, max_new_tokens=6, gamma=0.0,
                top_k=4, sample_micro_batch=64)
    return argparse.Namespace(**{**base, **kw})


def test_each_mode_runs_end_to_end(tiny_model):
    model, tok = tiny_model
    probs = WORLD.problems("rl", "test")[:6]
    pool = Pool()
    pool.add([Entry(p["id"], p["question"], "add then add : 1 + 1 = 2 , 2 + 1 = 3 #### 3", 1.0,
                    0, ["add then add"], [], {"family": p["family"]})
              for p in WORLD.problems("rl", "train")[:40]])
    z = E.evaluate(model, tok, probs, "zero-shot", cfg(), k=2)
    assert z["n"] == 6 and 0 <= z["mean@2"] <= z["pass@2"] <= 1
    p = E.evaluate(model, tok, probs, "pool", cfg(), pool=pool, k=1)
    assert p["retrieval_hit_rate"] > 0
    s = E.evaluate(model, tok, probs, "self-correct", cfg(), k=1)
    assert 0 <= s["first_accuracy"] <= 1 and "mean@1" in s
    leaky = Pool()
    leaky.add([Entry(probs[0]["id"], probs[0]["question"], "x", 0.0, 0)])
    with pytest.raises(UserError, match="leak"):
        E.evaluate(model, tok, probs, "pool", cfg(), pool=leaky)
    with pytest.raises(UserError, match="needs --pool"):
        E.evaluate(model, tok, probs, "pool", cfg())


def test_greedy_when_k_is_one_is_deterministic(tiny_model):
    model, tok = tiny_model
    probs = WORLD.problems("sft", "test")[:5]
    a = E.evaluate(model, tok, probs, "zero-shot", cfg(), seed=1)
    b = E.evaluate(model, tok, probs, "zero-shot", cfg(), seed=2)
    assert a["samples"] == b["samples"]


def test_cli_writes_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    E.main(["--model", tiny_dir, "--mode", "all", "--limit", "3", "--max-new-tokens", "4",
            "--out", str(out)])
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"rl-test", "sft-test", "unseen-test"}
    assert set(res["rl-test"]) == {"zero-shot", "self-correct"}   # no pool given
    assert "mean@1" in capsys.readouterr().out
