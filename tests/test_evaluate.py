"""Evaluation: the unbiased pass@k, the metrics of a model whose accuracy is known in advance,
and each of the three modes end to end on a tiny model."""
import argparse
import json
import math
from types import SimpleNamespace

import pytest

import evaluate as E
from support import model as M
from support import world as W
from support.errors import UserError
from pool import Entry, Pool

WORLD = W.TinyWorld()


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


# --- metrics against a model whose accuracy is known in advance ------------------------------

KNOWN = WORLD.problems("rl", "test")[:10]


def known_sampler(monkeypatch):
    """Replace model.sample by a stand-in with accuracy fixed in advance. Asked to solve
    problem i, its j-th sample is right iff j < i % 5. Asked to reflect on an attempt, its
    first sample fixes the answer when i % 3 == 0, and otherwise it repeats the attempt."""
    calls = []

    def sample(model, tok, prompt_texts, n=1, **kw):
        calls.append((list(prompt_texts), n))
        texts = []
        for t in prompt_texts:
            i = [p["question"] for p in KNOWN].index(t.split("Problem: ")[-1])
            gold = KNOWN[i]["answer"]
            for j in range(n):
                if "Attempt: " in t:
                    attempt = t.split("Attempt: ")[1].split("\n")[0]
                    texts.append(f"#### {gold}" if j == 0 and i % 3 == 0 else attempt)
                else:
                    texts.append(f"#### {gold}" if j < i % 5 else f"#### {int(gold) + 1}")
        return SimpleNamespace(texts=texts)
    monkeypatch.setattr(M, "sample", sample)
    return calls


def test_zero_shot_mean_and_pass_at_k_of_a_known_model(monkeypatch):
    """mean@k averages the samples, pass@k counts a problem with any right sample."""
    calls = known_sampler(monkeypatch)
    # right samples per problem, i % 5 of 4: 0 1 2 3 4 0 1 2 3 4
    res = E.evaluate(None, None, KNOWN, "zero-shot", cfg(), k=4)
    assert calls[-1][1] == 4
    assert res["mean@4"] == pytest.approx(0.5)   # (0 + 1 + 2 + 3 + 4) * 2 / 40
    assert res["pass@4"] == pytest.approx(0.8)   # all but problems 0 and 5
    res = E.evaluate(None, None, KNOWN, "zero-shot", cfg(), k=1)
    assert res["mean@1"] == res["pass@1"] == pytest.approx(0.8)


def test_self_correct_first_and_final_accuracy_of_a_known_model(monkeypatch):
    """first_accuracy is the first answer's; the final metrics score the reflections, each on
    the model's own first answer."""
    calls = known_sampler(monkeypatch)
    res = E.evaluate(None, None, KNOWN, "self-correct", cfg(), k=2)
    (solve, n_first), (reflect, n_final) = calls
    assert n_first == 1 and n_final == 2
    assert res["first_accuracy"] == pytest.approx(0.8)   # wrong first: problems 0 and 5
    # sample 0: fixed for 0, 3, 6, 9, else the first answer: only problem 5 stays wrong (0.9);
    # sample 1: the first answer again (0.8)
    assert res["mean@2"] == pytest.approx(0.85)
    assert res["pass@2"] == pytest.approx(0.9)
    firsts = [f"#### {p['answer']}" if i % 5 else f"#### {int(p['answer']) + 1}"
              for i, p in enumerate(KNOWN)]
    assert all(f"Attempt: {a}" in t for a, t in zip(firsts, reflect))


# --- defaults from the run that made the model -----------------------------------------------

def spy_cli(monkeypatch, model_dir, *flags):
    """evaluate.main on model_dir with the sampler and loader recorded: (the max_new_tokens
    it sampled with, load_model's keyword arguments)."""
    seen, loads = [], []
    real_sample, real_load = M.sample, M.load_model
    with monkeypatch.context() as m:
        m.setattr(M, "sample", lambda *a, **k: seen.append(k["max_new_tokens"])
                  or real_sample(*a, **k))
        m.setattr(M, "load_model", lambda *a, **k: loads.append(k) or real_load(*a, **k))
        E.main(["--model", str(model_dir), "--limit", "1", *flags])
    return set(seen), loads[0]


def test_cli_takes_length_and_precision_from_the_training_run(tiny_dir, tmp_path, monkeypatch,
                                                              capsys):
    """A model in a train.py run directory (final/) is evaluated with that run's response
    length and precision, loaded for inference (frozen: bf16 Linear weights on a bf16 GPU)."""
    import shutil
    run = tmp_path / "rl"
    shutil.copytree(tiny_dir, run / "final")
    (run / "config.json").write_text(json.dumps({"max_new_tokens": 7, "precision": "bf16"}))
    lengths, load = spy_cli(monkeypatch, run / "final")
    assert lengths == {7} and load["precision"] == "bf16" and load["frozen"] is True
    out = capsys.readouterr().out
    assert "config.json" in out and "precision: bf16" in out


def test_cli_takes_them_from_an_sft_output_else_the_preset_else_flags(tiny_dir, tmp_path,
                                                                      monkeypatch):
    import shutil
    sft = tmp_path / "sft"
    shutil.copytree(tiny_dir, sft)
    lengths, load = spy_cli(monkeypatch, sft)
    assert lengths == {32} and load["precision"] == "fp32"       # the tiny preset
    lengths, load = spy_cli(monkeypatch, sft, "--preset", "smol")
    assert lengths == {256} and load["precision"] == "fp32"       # auto, on a CPU
    (sft / "sft_config.json").write_text(json.dumps({"max_new_tokens": 5, "precision": "fp32"}))
    assert spy_cli(monkeypatch, sft)[0] == {5}
    assert spy_cli(monkeypatch, sft, "--max-new-tokens", "3")[0] == {3}
