"""The LANPO loop: the rules that make feedback safe, the p_t mix, where responses are scored,
and that a run resumed from a checkpoint is the run that was never interrupted."""
import json
import os
import random

import pytest
import torch

import data
import model as M
import prompts
import train
from errors import UserError, run_cli
from pool import Entry, Pool

WORLD = data.TinyWorld()


def args_for(**kw):
    a = train.build_parser().parse_args([])
    a.preset, a.data = "tiny", "tiny"
    for k, v in train.PRESETS["tiny"].items():
        setattr(a, k, v)
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def small_run(tmp_path, tiny_dir, *extra, name="rl", steps=2):
    return ["--init", tiny_dir, "--run-dir", str(tmp_path / name), "--steps", str(steps),
            "--problems-per-step", "3", "--group-size", "4", "--max-new-tokens", "8",
            "--summary-tokens", "8", "--eval-every", "0", "--ckpt-every", "1",
            "--no-final-eval", *extra]


def filled_pool(problems, own_principle=None, reward_of=lambda j: float(j % 2)):
    """A pool where every problem has 4 attempts (alternately right and wrong)."""
    pool = Pool()
    for p in problems:
        pool.add([Entry(p["id"], p["question"], f"attempt {j} of {p['id']}", reward_of(j), 0,
                        [own_principle or f"principle of {p['id']}"], ["a pitfall"],
                        {"family": p["family"]}) for j in range(4)])
    return pool


# --- the two safety rules -------------------------------------------------------------------

def test_gold_answer_never_reaches_any_prompt(tmp_path, tiny_dir, monkeypatch):
    """Replace every gold answer with a sentinel the model can never write, run LANPO steps
    (with intra and inter feedback and summaries), and look at every prompt the model saw."""
    sentinel = "GOLDSENTINEL"
    problems = [dict(p, answer=sentinel) for p in WORLD.problems("rl", "train")[:6]]
    monkeypatch.setattr(data, "train_problems", lambda spec, limit=None: problems)
    seen = []
    real_sample = M.sample

    def spy(model, tok, prompt_texts, *a, **kw):
        seen.extend(prompt_texts)
        return real_sample(model, tok, prompt_texts, *a, **kw)
    monkeypatch.setattr(M, "sample", spy)
    train.main(small_run(tmp_path, tiny_dir, "--p-feedback", "1.0", "--gamma", "0", steps=4))
    assert len(seen) > 4 * 3 * 4
    assert any("Lessons from similar problems" in s or "earlier attempt" in s for s in seen)
    assert not any(sentinel.lower() in s.lower() for s in seen)


def test_inter_sample_context_never_comes_from_the_same_problem():
    probs = WORLD.problems("rl", "train")
    fam = probs[0]["family"]
    siblings = [p for p in probs if p["family"] == fam][:5]
    pool = filled_pool(siblings + [p for p in probs if p["family"] != fam][:40])
    a = args_for(feedback="inter", gamma=0.0, top_k=10)
    for p in siblings:
        texts, has_ctx, facts = train.build_prompts([p], pool, a, random.Random(0), WORLD)
        assert any(has_ctx)
        assert p["id"] not in facts[0]["retrieved"]
        assert all(f"principle of {p['id']}" not in t for t in texts)
        assert any("principle of" in t for t in texts)   # siblings' lessons do arrive


def test_reflected_attempt_is_chosen_without_its_reward():
    probs = WORLD.problems("rl", "train")[:4]
    a = args_for(feedback="intra")
    got = []
    for reward_of in (lambda j: float(j % 2), lambda j: float(1 - j % 2), lambda j: 0.0):
        pool = filled_pool(probs, reward_of=reward_of)
        texts, _, _ = train.build_prompts(probs, pool, a, random.Random(7), WORLD)
        got.append(texts)
    assert got[0] == got[1] == got[2]
    # and the reflection prompt says nothing about the outcome
    reflective = [t for t in got[0] if "Attempt:" in t]
    assert len(reflective) == 4 * train.n_feedback(a.p_feedback, a.group_size)
    for t in reflective:
        assert "earlier attempt" in t and "It may be right or wrong" in t
        assert not any(label in t for label in ("(right)", "(wrong)", "It was wrong"))


@pytest.mark.parametrize("p_feedback,G", [(0.75, 8), (0.5, 4), (1.0, 4), (0.25, 6), (0.75, 6),
                                          (0.0, 4)])
def test_feedback_aware_count_is_round_p_times_G(p_feedback, G):
    probs = WORLD.problems("rl", "train")[:5]
    pool = filled_pool(WORLD.problems("rl", "train")[:40])
    a = args_for(p_feedback=p_feedback, group_size=G, gamma=0.0)
    _, has_ctx, _ = train.build_prompts(probs, pool, a, random.Random(0), WORLD)
    want = int(p_feedback * G + 0.5)
    assert [sum(has_ctx[i * G:(i + 1) * G]) for i in range(len(probs))] == [want] * len(probs)


def test_oracle_context_is_the_principle_and_no_number():
    a = args_for(feedback="oracle")
    for p in WORLD.problems("rl", "test"):
        texts, has_ctx, _ = train.build_prompts([p], Pool(), a, random.Random(0), WORLD)
        context = texts[0].split("Problem:")[0]
        assert WORLD.by_name[p["family"]].principle in context
        assert not any(ch.isdigit() for ch in context)


def test_oracle_on_real_data_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, ["--data", "gsm8k", "--feedback", "oracle", "--init", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "oracle" in err and "\n" not in err


def test_plain_grpo_never_touches_the_pool(tmp_path, tiny_dir, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the pool was read with --p-feedback 0")
    for name in ("retrieve", "earlier_attempt", "lessons", "raw_attempts"):
        monkeypatch.setattr(Pool, name, forbidden)
    train.main(small_run(tmp_path, tiny_dir, "--p-feedback", "0"))
    rows = [json.loads(l) for l in open(tmp_path / "rl" / "metrics.jsonl")]
    assert [r["feedback_fraction"] for r in rows] == [0.0, 0.0]
    assert open(tmp_path / "rl" / "pool.jsonl").read() == ""


# --- where a feedback-aware response is scored ----------------------------------------------

def test_score_context_plain_and_prompt(tiny_model):
    model, tok = tiny_model
    probs = WORLD.problems("rl", "train")[:2]
    G = 4
    pool = filled_pool(WORLD.problems("rl", "train")[:30])
    a = args_for(group_size=G, gamma=0.0, p_feedback=0.5)
    texts, has_ctx, _ = train.build_prompts(probs, pool, a, random.Random(0), WORLD)
    assert has_ctx == [True, True, False, False] * 2
    torch.manual_seed(0)
    r = M.sample(model, tok, texts, max_new_tokens=6)
    plain_ids = M.encode_prompts(tok, [prompts.solve_prompt(p["question"]) for p in probs])
    a.score_context = "prompt"
    assert train.scoring_prompt_ids(tok, probs, r.prompt_ids, has_ctx, a) == r.prompt_ids
    a.score_context = "plain"
    ids = train.scoring_prompt_ids(tok, probs, r.prompt_ids, has_ctx, a)
    for i in range(len(texts)):
        want = plain_ids[i // G] if has_ctx[i] else r.prompt_ids[i]
        assert ids[i] == want
        if not has_ctx[i]:
            assert ids[i] == M.encode_prompts(tok, [texts[i]])[0]   # plain rows unchanged
    # the log-probs the loss would use equal those computed directly under the plain prompt
    lp = M.token_logprobs(model, ids, r.response_ids, r.response_mask)
    for i in range(len(texts)):
        direct = M.token_logprobs(model, [plain_ids[i // G]], r.response_ids[i:i + 1],
                                  r.response_mask[i:i + 1])
        assert torch.allclose(lp[i], direct[0], atol=1e-5)


def test_microbatched_update_equals_full_batch(tiny_dir):
    grads = []
    for mb in (64, 3):
        model, tok = M.load_model(tiny_dir, device="cpu")
        ref, _ = M.load_model(tiny_dir, device="cpu")
        a = args_for(group_size=4, logprob_micro_batch=mb, beta=0.1, max_new_tokens=8)
        # prompts of different lengths (plain and feedback-aware), so the micro-batches of the
        # small size are cut from rows sorted by length
        texts = [prompts.solve_prompt(p["question"]) if j % 2 else
                 prompts.feedback_prompt(p["question"], ["add then mul"], ["sub then add"])
                 for p in WORLD.problems("rl", "train")[:3] for j in range(4)]
        assert len({len(ids) for ids in M.encode_prompts(tok, texts)}) > 1
        torch.manual_seed(1)
        r = M.sample(model, tok, texts, max_new_tokens=8)
        adv = torch.tensor([1., -1., .5, -.5] * 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)   # lr 0: keep the weights, read grads
        train.update(model, ref, opt, r, r.prompt_ids, adv, a)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# --- checkpoints and resume -----------------------------------------------------------------

def fake_reward(text, gold):
    """Deterministic reward with variance, so an untrained model gets real gradients."""
    return float(len(text) % 3 == 0)


def _final_state(run_dir):
    model, _ = M.load_model(os.path.join(run_dir, "checkpoint"), device="cpu")
    metrics = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    for m in metrics:
        for k in list(m):
            if k.startswith("t_") or k == "tokens_per_s":
                del m[k]
    return model.state_dict(), open(os.path.join(run_dir, "checkpoint", "pool.jsonl")).read(), \
        metrics


def test_resume_continues_exactly(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(train, "reward", fake_reward)
    train.main(small_run(tmp_path, tiny_dir, name="straight", steps=4))
    train.main(small_run(tmp_path, tiny_dir, name="resumed", steps=2))
    train.main(small_run(tmp_path, tiny_dir, "--resume", name="resumed", steps=4))
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert [m["step"] for m in b[2]] == [1, 2, 3, 4]
    assert a[1] == b[1] and len(a[1]) > 0
    assert a[2] == b[2]
    moved = False
    init, _ = M.load_model(tiny_dir, device="cpu")
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
        moved |= not torch.equal(a[0][k], init.state_dict()[k])
    assert moved   # the run really trained


def test_resume_rejects_an_incompatible_config(tmp_path, tiny_dir, capsys):
    train.main(small_run(tmp_path, tiny_dir, steps=1))
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, small_run(tmp_path, tiny_dir, "--resume", "--p-feedback", "0.5"))
    assert e.value.code == 2 and "p_feedback" in capsys.readouterr().err
    # more steps is a harmless change
    train.main(small_run(tmp_path, tiny_dir, "--resume", steps=2))


@pytest.mark.parametrize("flags,needle", [
    (["--p-feedback", "1.5"], "p-feedback"), (["--group-size", "1"], "group-size"),
    (["--gamma", "-0.1"], "gamma"), (["--steps", "-1"], "steps"),
    (["--preset", "huge"], "preset"), (["--init", "no/such/dir/at/all"], "not found"),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, tiny_dir, capsys, flags, needle):
    argv = small_run(tmp_path, tiny_dir) + flags
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and "\n" not in err
    assert not (tmp_path / "rl" / "metrics.jsonl").exists()


def test_refuses_to_overwrite_another_run(tmp_path, tiny_dir, capsys):
    train.main(small_run(tmp_path, tiny_dir, steps=1))
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, small_run(tmp_path, tiny_dir, steps=1))
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    train.main(small_run(tmp_path, tiny_dir, "--overwrite", steps=1))


# --- the language channel against the tiny world's truth (issue: retrieval precision etc.) --

def test_retrieval_precision_on_a_hand_made_pool():
    probs = WORLD.problems("rl", "train")
    query = probs[0]
    same = [p for p in probs if p["family"] == query["family"] and p["id"] != query["id"]][:3]
    other = next(p for p in probs if p["family"] != query["family"])
    # make the other family's problem look similar: same words, another family name
    other = dict(other, question=query["question"].replace(query["family"], other["family"]))
    # unrelated problems (another family, another person) keep BM25's idf meaningful
    person = query["question"].split()[0]
    fillers = [p for p in probs if p["family"] not in (query["family"], other["family"])
               and p["question"].split()[0] != person][:20]
    pool = filled_pool(same + [other] + fillers)
    a = args_for(feedback="inter", gamma=0.0, top_k=4)
    _, _, facts = train.build_prompts([query], pool, a, random.Random(0), WORLD)
    assert len(facts[0]["retrieved"]) == 4
    truth = train.language_channel_truth(WORLD, [query], facts, None, [0.0] * 8, 8)
    assert truth["retrieval_precision"] == 0.75
    assert truth["summary_correct"] is None   # no summaries asked for: absent, not faked


def test_summary_correctness_from_the_truth():
    probs = WORLD.problems("rl", "train")[:4]
    right = [WORLD.by_name[p["family"]].principle for p in probs]
    wrong = next(data.procedure_text(q) for q in data.PROCEDURES
                 if data.procedure_text(q) != right[2])
    summaries = [([right[0]], []), ([right[1]], ["x"]), ([wrong], []), None]
    rewards = [1.0, 0.0] + [0.0, 0.0] + [1.0, 1.0] + [0.0, 0.0]   # G = 2
    facts = [{"same_family": None}] * 4
    truth = train.language_channel_truth(WORLD, probs, facts, summaries, rewards, 2)
    assert truth["summary_correct"] == 0.5              # 2 of 4 (the None one is wrong)
    assert truth["summary_correct_given_right"] == 0.5  # groups 0 and 2 had a right attempt


def test_rl_family_train_accuracy_splits_by_family_and_rollout_kind():
    rl, sft = WORLD.problems("rl", "train")[0], WORLD.problems("sft", "train")[0]
    rewards = [1.0, 0.0, 1.0, 1.0] + [1.0, 1.0, 1.0, 1.0]   # G = 4: the rl group, the sft group
    has_context = [True, True, False, False] * 2
    acc = train.rl_family_train_accuracy(WORLD, [rl, sft], rewards, has_context, 4)
    # only the rl group counts: feedback-aware 1 of 2 right, plain 2 of 2
    assert acc == {"train_acc_rl_plain": 1.0, "train_acc_rl_feedback": 0.5}
    acc = train.rl_family_train_accuracy(WORLD, [sft], rewards[4:], has_context[4:], 4)
    assert acc == {"train_acc_rl_plain": None, "train_acc_rl_feedback": None}
