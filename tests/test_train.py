"""The LANPO loop: the rules that make feedback safe, the p_t mix, where responses are scored,
the glue of one step (each reward with its own gold, the advantages and gradient the update
takes, every flag that changes the computation), and that a run resumed from a checkpoint is
the run that was never interrupted."""
import copy
import hashlib
import inspect
import json
import os
import random
import re
from types import SimpleNamespace

import pytest
import torch

from support import config
from support import controls as C
from support import data
import grpo
from support import model as M
import prompts
import train
from support import rundir
from support import world as W
from support.errors import run_cli
from pool import Entry, Pool, parse_summary

WORLD = W.TinyWorld()



def prompts_of(problems, pool, args, rng, world=WORLD):
    """train.build_prompts with the contexts main would choose for these flags."""
    return train.build_prompts(problems, C.make(args, pool, world), args, rng)

def args_for(**kw):
    a = config.build_parser().parse_args([])
    a.preset, a.data = "tiny", "tiny"
    for k, v in config.PRESETS["tiny"].items():
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
    monkeypatch.setattr(data, "train_problems", lambda spec, **kw: problems)
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
        texts, has_ctx, retrieved = prompts_of([p], pool, a, random.Random(0))
        assert any(has_ctx)
        assert retrieved[0] and p["id"] not in retrieved[0]
        assert all(f"principle of {p['id']}" not in t for t in texts)
        assert any("principle of" in t for t in texts)   # siblings' lessons do arrive


def test_reflected_attempt_is_chosen_without_its_reward():
    probs = WORLD.problems("rl", "train")[:4]
    a = args_for(feedback="intra")
    got = []
    for reward_of in (lambda j: float(j % 2), lambda j: float(1 - j % 2), lambda j: 0.0):
        pool = filled_pool(probs, reward_of=reward_of)
        texts, _, _ = prompts_of(probs, pool, a, random.Random(7))
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
    _, has_ctx, _ = prompts_of(probs, pool, a, random.Random(0))
    want = int(p_feedback * G + 0.5)
    assert [sum(has_ctx[i * G:(i + 1) * G]) for i in range(len(probs))] == [want] * len(probs)


def test_oracle_context_is_the_principle_and_no_number():
    a = args_for(feedback="oracle")
    for p in WORLD.problems("rl", "test"):
        texts, has_ctx, _ = prompts_of([p], Pool(), a, random.Random(0))
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
    texts, has_ctx, _ = prompts_of(probs, pool, a, random.Random(0))
    assert has_ctx == [True, True, False, False] * 2
    torch.manual_seed(0)
    r = M.sample(model, tok, texts, max_new_tokens=6)
    plain_ids = M.encode_prompts(tok, [prompts.solve_prompt(p["question"]) for p in probs])
    a.score_context = "prompt"
    assert C.scoring_prompts(tok, probs, r.prompt_ids, has_ctx, a) == r.prompt_ids
    a.score_context = "plain"
    ids = C.scoring_prompts(tok, probs, r.prompt_ids, has_ctx, a)
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
    for budget in (100_000, 60):   # one chunk; chunks of a few rows
        model, tok = M.load_model(tiny_dir, device="cpu")
        ref, _ = M.load_model(tiny_dir, device="cpu")
        a = args_for(group_size=4, logprob_tokens=budget, beta=0.1, max_new_tokens=8)
        # prompts of different lengths (plain and feedback-aware), so the micro-batches of the
        # small size are cut from rows sorted by length
        texts = [prompts.solve_prompt(p["question"]) if j % 2 else
                 prompts.feedback_prompt(p["question"], ["add then mul"], ["sub then add"])
                 for p in WORLD.problems("rl", "train")[:3] for j in range(4)]
        assert len({len(ids) for ids in M.encode_prompts(tok, texts)}) > 1
        torch.manual_seed(1)
        r = M.sample(model, tok, texts, max_new_tokens=8)
        adv = torch.tensor([1., -1., .5, -.5] * 3)
        opt = ReadGrads(model.parameters(), lr=0.0)   # lr 0: keep the weights, read grads
        train.update(model, ref, opt, r, r.prompt_ids, adv, a)
        grads.append(opt.seen)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# --- the glue of one step: rewards, advantages, the update, the summarizer, the flags -------

def gold_aware_reward(text, gold):
    """A deterministic 0/1 reward of the response *and* the gold: scored against another
    problem's gold, a response gets another reward about half the time."""
    return float(hashlib.sha256(f"{text}|{gold}".encode()).digest()[0] % 2)


def question_of(prompt):
    """The question of a solve, feedback-aware or summarize prompt."""
    return prompt.split("Problem: ")[1].split("\n")[0]


SHOWN = re.compile(r"^Attempt \((right|wrong)\): (.*)$", re.M)   # a labelled attempt line


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


class ReadGrads(torch.optim.SGD):
    """SGD that keeps the gradient it stepped with (`seen`): update() frees the gradients right
    after the optimizer step."""

    def step(self, closure=None):
        self.seen = torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def spy(monkeypatch, name):
    """Record every call of model.<name>: its arguments by name, and its result."""
    calls, real = [], getattr(M, name)

    def recorded(*a, **kw):
        calls.append(inspect.signature(real).bind(*a, **kw).arguments)
        calls[-1]["result"] = real(*a, **kw)
        return calls[-1]["result"]
    monkeypatch.setattr(M, name, recorded)
    return calls


def handmade_rollouts(tok, lengths, width=8):
    """Two groups of three responses of known lengths (random tokens), under prompts of
    different lengths (plain and feedback-aware)."""
    texts = [prompts.solve_prompt(p["question"]) if j % 2 else
             prompts.feedback_prompt(p["question"], ["add then mul"], ["sub then add"])
             for p in WORLD.problems("rl", "train")[:2] for j in range(3)]
    ids = torch.randint(4, len(tok), (len(lengths), width),
                        generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()
    return M.Rollouts(M.encode_prompts(tok, texts), ids, mask, [""] * len(lengths),
                      torch.zeros(len(lengths), dtype=torch.bool))


def policy_gradient(model, r, adv, aggregation, temperature, max_len):
    """The GRPO gradient at ratio 1, written out: -sum_i A_i sum_t grad log pi(y_it) / norm,
    with norm |y_i| * N (seq-mean), sum_i |y_i| (token-mean) or max_len * N (seq-sum-norm)."""
    model.zero_grad(set_to_none=True)
    lp = M.token_logprobs(model, r.prompt_ids, r.response_ids, r.response_mask,
                          temperature=temperature)   # 0 outside the mask
    per_seq, n = (adv[:, None] * lp).sum(1), r.response_mask.sum(1)
    loss = {"seq-mean": -(per_seq / n).mean(), "token-mean": -per_seq.sum() / n.sum(),
            "seq-sum-norm": -(per_seq / max_len).mean()}[aggregation]
    loss.backward()
    return grads(model)


def test_update_gradient_is_the_policy_gradient_of_each_aggregation_and_temperature(tiny_model):
    """update() follows --aggregation, --temperature and the sign of the advantages (also when
    micro-batched): its gradient is the one written out by hand, and no other setting's."""
    model, tok = tiny_model
    r = handmade_rollouts(tok, [1, 3, 8, 2, 5, 6])
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.7, 0.0])
    settings = [(agg, t) for agg in grpo.AGGREGATIONS for t in (1.0, 0.6)]
    want = {s: policy_gradient(model, r, adv, *s, max_len=10) for s in settings}
    for agg, t in settings:
        for budget in (100_000, 40):   # one chunk; chunks of a few rows
            a = args_for(aggregation=agg, temperature=t, beta=0.0, max_new_tokens=10,
                         max_grad_norm=1e9, logprob_tokens=budget)
            opt = ReadGrads(model.parameters(), lr=0.0)   # lr 0: read the gradient
            train.update(model, None, opt, r, r.prompt_ids, adv, a)
            got = opt.seen
            assert torch.allclose(got, want[agg, t], rtol=1e-4, atol=1e-7), (agg, t, budget)
            assert not any(torch.allclose(got, want[s], rtol=1e-2) for s in settings
                           if s != (agg, t))


def test_second_inner_epoch_is_clipped_against_the_policy_before_the_first(tiny_dir):
    """--inner-epochs 2: epoch 2's ratio is to the log-probs from before epoch 1 (not to
    itself), so the PPO clip acts; its gradient and the final weights are those by hand."""
    lr, clip = 0.1, 0.1   # epoch 2 clips about half of the tokens
    model, tok = M.load_model(tiny_dir, device="cpu")
    r = handmade_rollouts(tok, [4, 3, 8, 2, 5, 6])
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.7, -0.3])
    # by hand, on a copy: epoch 1 is the plain policy gradient and one SGD step ...
    ref = copy.deepcopy(model)
    with torch.no_grad():
        old = M.token_logprobs(ref, r.prompt_ids, r.response_ids, r.response_mask)
    policy_gradient(ref, r, adv, "seq-mean", 1.0, 10)
    with torch.no_grad():
        for p in ref.parameters():
            p -= lr * p.grad
    # ... epoch 2 maximizes min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = pi / pi_old
    ref.zero_grad(set_to_none=True)
    lp = M.token_logprobs(ref, r.prompt_ids, r.response_ids, r.response_mask)
    ratio, A, m = torch.exp(lp - old), adv[:, None], r.response_mask
    surrogate = torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A)
    (-((surrogate * m).sum(1) / m.sum(1)).mean()).backward()
    want = grads(ref)
    weights = torch.cat([(p - lr * p.grad).flatten() for p in ref.parameters()]).detach()
    assert not torch.allclose(want, policy_gradient(ref, r, adv, "seq-mean", 1.0, 10),
                              rtol=1e-2)   # with rho = 1 (old = current) it would differ
    a = args_for(inner_epochs=2, clip=clip, beta=0.0, max_new_tokens=10, max_grad_norm=1e9)
    opt = ReadGrads(model.parameters(), lr=lr)
    stats = train.update(model, None, opt, r, r.prompt_ids, adv, a)
    assert stats["clip_frac"] > 0 and stats["ratio"] != 1.0
    assert torch.allclose(opt.seen, want, rtol=1e-4, atol=1e-6)   # epoch 2's gradient
    assert torch.allclose(torch.cat([p.flatten() for p in model.parameters()]), weights,
                          atol=1e-5)


@pytest.mark.parametrize("scale", [True, False])
def test_train_step_updates_with_each_groups_own_advantages(tiny_dir, monkeypatch, scale):
    """train_step's gradient is update() with A = r - mean(group), divided by std(group)
    unless --no-scale-rewards, each r scored against its own problem's gold."""
    model, tok = M.load_model(tiny_dir, device="cpu")
    problems = WORLD.problems("rl", "train")[:3]
    monkeypatch.setattr(train, "reward", gold_aware_reward)
    sampled = spy(monkeypatch, "sample")
    a = args_for(p_feedback=0.0, group_size=4, problems_per_step=3, beta=0.0,
                 max_new_tokens=6, max_grad_norm=1e9, scale_rewards=scale)
    opt = ReadGrads(model.parameters(), lr=0.0)   # lr 0: keep the weights, read grads
    torch.manual_seed(0)
    pool = Pool()
    m, _ = train.train_step(1, model, None, tok, opt, pool, C.make(a, pool, WORLD), problems, a,
                            random.Random(0), WORLD)
    got = opt.seen
    (call,) = sampled
    texts, r = call["prompts"], call["result"]
    gold = {p["question"]: p["answer"] for p in problems}
    rewards = torch.tensor([gold_aware_reward(t, gold[question_of(p)])
                            for p, t in zip(texts, r.texts)])
    assert m["reward"] == pytest.approx(rewards.mean().item())

    def advantages(scaled):
        adv = torch.zeros(len(texts))
        for q in gold:
            rows = [i for i, p in enumerate(texts) if question_of(p) == q]
            g = rewards[rows]
            adv[rows] = (g - g.mean()) / (g.std(correction=0) + 1e-6 if scaled else 1.0)
        return adv
    train.update(model, None, opt, r, r.prompt_ids, advantages(scale), a)
    want = opt.seen
    train.update(model, None, opt, r, r.prompt_ids, advantages(not scale), a)
    assert want.abs().sum() > 0 and not torch.allclose(want, opt.seen, rtol=1e-2)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_summarizer_sees_its_own_distinct_attempts_with_true_outcomes(monkeypatch):
    """summarize_groups shows each problem its own distinct attempts, each labelled with its
    true outcome, at most half of them right, the rest wrong ones as far as they go."""
    problems = WORLD.problems("rl", "train")[:3]
    groups = [[(f"right {j}", 1.0) for j in range(8)],                       # 8 right
              [("right 0", 1.0)] + [(f"wrong {j}", 0.0) for j in range(7)],  # 1 right, 7 wrong
              [("r a", 1.0)] * 2 + [("r b", 1.0)] + [("w c", 0.0)] * 2 +     # repeats: 2 right,
              [(f"w {x}", 0.0) for x in "def"]]                              # 4 wrong distinct
    texts = [f"{t} of {p['id']}" for p, g in zip(problems, groups) for t, _ in g]
    rewards = [r for g in groups for _, r in g]
    seen = []

    def stub(model, tok, prompt_texts, *a, **kw):   # the summarizer, no model needed
        seen.extend(prompt_texts)
        return SimpleNamespace(texts=[f"Principles: p{i}\nPitfalls: none"
                                      for i in range(len(prompt_texts))])
    monkeypatch.setattr(M, "sample", stub)
    a = args_for(group_size=8, summary_attempts=4)
    summaries = train.summarize_groups(None, None, problems, texts, rewards, a, random.Random(0))
    assert summaries == [(["p0"], []), (["p1"], []), (["p2"], [])]
    for i, (p, prompt) in enumerate(zip(problems, seen)):
        assert question_of(prompt) == p["question"]
        outcome = dict(zip(texts[i * 8:(i + 1) * 8], rewards[i * 8:(i + 1) * 8]))
        shown = SHOWN.findall(prompt)
        assert len({t for _, t in shown}) == len(shown) and all(t in outcome for _, t in shown)
        assert all((label == "right") == (outcome[t] > 0) for label, t in shown)
        n_right = sum(o > 0 for o in outcome.values())
        n_wrong = len(outcome) - n_right
        assert sum(label == "right" for label, _ in shown) == min(n_right, 2)
        assert len(shown) == min(4, min(n_right, 2) + n_wrong)


def test_every_reward_and_summary_label_belongs_to_its_own_problem(tmp_path, tiny_dir,
                                                                   monkeypatch):
    """A reward that knows the gold: every rollout in the pool carries the reward against its
    own problem's gold, and the summarizer sees each attempt with that outcome."""
    problems = WORLD.problems("rl", "train")[:6]
    monkeypatch.setattr(data, "train_problems", lambda spec, **kw: problems)
    monkeypatch.setattr(train, "reward", gold_aware_reward)
    sampled = spy(monkeypatch, "sample")
    train.main(small_run(tmp_path, tiny_dir, "--problems-per-step", "6"))
    seen = [t for c in sampled for t in c["prompts"]]
    gold = {p["question"]: p["answer"] for p in problems}
    pool = [json.loads(l) for l in open(tmp_path / "rl" / "pool.jsonl")]
    assert len(pool) == 2 * 6 * 4 and {e["reward"] for e in pool} == {0.0, 1.0}
    for e in pool:
        assert e["reward"] == gold_aware_reward(e["attempt"], gold[e["question"]])
    summarize = [s for s in seen if s.startswith("Summarize these attempts")]
    assert len(summarize) == 2 * 6
    labels = []
    for s in summarize:
        own = {e["attempt"] for e in pool if e["question"] == question_of(s)}
        for label, text in SHOWN.findall(s):
            assert text in own
            assert label == ("right" if gold_aware_reward(text, gold[question_of(s)]) else
                             "wrong")
            labels.append(label)
    assert set(labels) == {"right", "wrong"}


def test_metrics_samples_and_pool_say_what_the_step_did(tiny_dir, monkeypatch):
    """One LANPO step from a pool with lessons: the metrics split the rewards by the prompt
    each rollout really had; each logged sample is the row it names (prompt, response,
    reward, feedback-aware or not); every new pool entry carries its own group's summary."""
    model, tok = M.load_model(tiny_dir, device="cpu")
    problems = WORLD.problems("rl", "train")[:4]
    pool = filled_pool(WORLD.problems("rl", "train")[:60])
    monkeypatch.setattr(train, "reward", gold_aware_reward)
    sampled = spy(monkeypatch, "sample")
    real_sample = M.sample

    def summaries_that_parse(model, tok, texts, *args, **kw):   # each names its own problem
        out = real_sample(model, tok, texts, *args, **kw)
        if texts[0].startswith("Summarize these attempts"):
            out.texts = [f"Principles: rule of {question_of(x)}\nPitfalls: slip of "
                         f"{question_of(x)}" for x in texts]
        return out
    monkeypatch.setattr(M, "sample", summaries_that_parse)
    a = args_for(p_feedback=0.5, group_size=4, problems_per_step=4, gamma=0.0, beta=0.0,
                 max_new_tokens=6, summary_tokens=8)
    torch.manual_seed(0)
    m, samples = train.train_step(7, model, None, tok, torch.optim.SGD(model.parameters(),
                                                                       lr=0.0),
                                  pool, C.make(a, pool, WORLD), problems, a, random.Random(0),
                                  WORLD)
    rollouts, summaries = sampled
    texts, r = rollouts["prompts"], rollouts["result"]
    gold = {p["question"]: p["answer"] for p in problems}
    rewards = [gold_aware_reward(y, gold[question_of(x)]) for x, y in zip(texts, r.texts)]
    ctx = [x != prompts.solve_prompt(question_of(x)) for x in texts]
    assert any(ctx) and not all(ctx)
    mean = lambda xs: sum(xs) / len(xs)   # noqa: E731
    assert m["reward_feedback"] == pytest.approx(mean([w for w, c in zip(rewards, ctx) if c]))
    assert m["reward_plain"] == pytest.approx(mean([w for w, c in zip(rewards, ctx) if not c]))
    assert m["feedback_fraction"] == pytest.approx(mean(ctx))
    assert len(samples) == 4
    for n, smp in enumerate(samples):   # the first and last row of the first two groups
        i = (n // 2) * 4 + (0 if n % 2 == 0 else 3)
        assert question_of(texts[i]) == [p["question"] for p in problems
                                         if p["id"] == smp["problem_id"]][0]
        assert (smp["prompt"], smp["response"], smp["reward"], smp["feedback_aware"]) == \
            (texts[i], r.texts[i], rewards[i], ctx[i])
    assert {s["feedback_aware"] for s in samples} == {True, False}
    parsed = {question_of(x): parse_summary(y)
              for x, y in zip(summaries["prompts"], summaries["result"].texts)}
    new = [e for entries in pool.entries.values() for e in entries if e.step == 7]
    assert len(new) == 16
    for e in new:
        assert (e.principles, e.pitfalls) == ([f"rule of {e.question}"], [f"slip of {e.question}"])
    assert all(parsed.values())


def spied_run(tmp_path, tiny_dir, monkeypatch, *flags, steps=3):
    """train.main on 6 problems (2 from each of 3 families, so BM25 finds siblings), all of
    them every step, p_t = 1, gamma 0, the gold-aware reward. Returns the problems, the
    arguments of every model.sample and model.token_logprobs call, and the final pool."""
    rl = WORLD.problems("rl", "train")
    problems = [p for f in sorted({p["family"] for p in rl})[:3]
                for p in [q for q in rl if q["family"] == f][:2]]
    monkeypatch.setattr(data, "train_problems", lambda spec, **kw: problems)
    monkeypatch.setattr(train, "reward", gold_aware_reward)
    sampled, scored = spy(monkeypatch, "sample"), spy(monkeypatch, "token_logprobs")
    train.main(small_run(tmp_path, tiny_dir, "--problems-per-step", "6", "--p-feedback", "1",
                         "--gamma", "0", *flags, steps=steps))
    pool = [json.loads(l) for l in open(tmp_path / "rl" / "pool.jsonl")]
    return problems, sampled, scored, pool


def test_leaky_reflection_shows_a_failed_attempt_and_says_so(tmp_path, tiny_dir, monkeypatch):
    """--reflection leaky (the teaching ablation) reaches the prompts: only failed attempts,
    announced as wrong."""
    _, sampled, _, pool = spied_run(tmp_path, tiny_dir, monkeypatch, "--feedback", "intra",
                                    "--reflection", "leaky")
    reflective = [t for c in sampled for t in c["prompts"] if "Attempt: " in t]
    failed = {(e["question"], e["attempt"]) for e in pool if e["reward"] == 0}
    assert len(reflective) > 10 and any(e["reward"] > 0 for e in pool)
    for t in reflective:
        assert "It was wrong; find the mistake" in t and "It may be right or wrong" not in t
        assert (question_of(t), t.split("Attempt: ")[1].split("\n")[0]) in failed


def test_raw_inter_format_shows_other_problems_attempts_with_their_outcomes(tmp_path, tiny_dir,
                                                                           monkeypatch):
    """--inter-format raw reaches the prompts: retrieved attempts with their true outcomes in
    place of lessons, and no summary is asked for."""
    _, sampled, _, pool = spied_run(tmp_path, tiny_dir, monkeypatch, "--feedback", "inter",
                                    "--inter-format", "raw")
    texts = [t for c in sampled for t in c["prompts"]]
    assert not any(t.startswith("Summarize") or "Lessons from similar" in t for t in texts)
    raw = [t for t in texts if "Attempts at similar problems:" in t]
    assert len(raw) > 10
    outcome = {(e["attempt"], "right" if e["reward"] > 0 else "wrong"): e["question"]
               for e in pool}
    shown = [(question_of(t), x) for t in raw for x in SHOWN.findall(t)]
    assert {label for _, (label, _) in shown} == {"right", "wrong"}
    for q, (label, attempt) in shown:
        assert outcome.get((attempt, label)) not in (None, q)   # true outcome, other problem


@pytest.mark.parametrize("mode", ["prompt", "plain"])
def test_score_context_decides_the_prompt_every_response_is_scored_under(tmp_path, tiny_dir,
                                                                        monkeypatch, mode):
    """--score-context reaches the update: with `plain` every log-prob (policy and reference)
    is taken under a plain prompt, with `prompt` under the prompt that was sampled."""
    problems, sampled, scored, _ = spied_run(tmp_path, tiny_dir, monkeypatch, "--feedback",
                                             "intra", "--score-context", mode)
    tok = M.load_model(tiny_dir, device="cpu")[1]
    rollout_prompts = [t for c in sampled if not c.get("greedy") for t in c["prompts"]]
    assert any("Attempt: " in t for t in rollout_prompts)   # feedback-aware rollouts happened
    if mode == "plain":
        rollout_prompts = [prompts.solve_prompt(question_of(t)) for t in rollout_prompts]
    want = {tuple(ids) for ids in M.encode_prompts(tok, rollout_prompts)}
    assert {tuple(ids) for c in scored for ids in c["prompt_ids"]} == want


def test_temperature_reaches_sampling_and_the_log_probs(tmp_path, tiny_dir, monkeypatch):
    """--temperature is the temperature rollouts are sampled at and scored under."""
    _, sampled, scored, _ = spied_run(tmp_path, tiny_dir, monkeypatch, "--temperature", "0.7",
                                      steps=1)
    rollouts = [c for c in sampled if not c.get("greedy")]
    assert rollouts and all(c.get("temperature") == 0.7 for c in rollouts)
    assert scored and all(c.get("temperature") == 0.7 for c in scored)


def test_compile_reaches_the_rollouts_and_the_step_logs_decode_time(tmp_path, tiny_dir,
                                                                     monkeypatch):
    """--compile reaches the rollouts' sampling (not the greedy summaries), the run computes
    what it computes without it, and every step logs its milliseconds per decoding step."""
    monkeypatch.setattr(M, "compile_backend", lambda device: ("eager", "graph capture only"))
    runs = []
    for name, flags in (("plain", []), ("compiled", ["--compile"])):
        with monkeypatch.context() as m:   # each run spies on the real model.sample
            _, sampled, _, _ = spied_run(tmp_path / name, tiny_dir, m, *flags, steps=2)
        rows = [json.loads(l) for l in open(tmp_path / name / "rl" / "metrics.jsonl")]
        steps = [r for r in rows if "reward" in r]
        assert all(("compiles" in r) is bool(flags) for r in steps)
        runs.append([{k: v for k, v in r.items() if not rundir.is_timing(k) and k != "compiles"}
                     for r in rows])
        rollouts = [c for c in sampled if not c.get("greedy")]
        assert rollouts and all(c.get("compile") is bool(flags) for c in rollouts)
        assert all(not c.get("compile") for c in sampled if c.get("greedy"))
        assert all(r["ms_per_decode_step"] > 0 for r in steps)
    assert runs[0] == runs[1]


def test_compiled_run_builds_one_graph_per_cache_length(tmp_path, tiny_dir, monkeypatch):
    """Ten --compile steps whose prompts grow as the pool fills (lessons and earlier attempts):
    every step logs the graphs it built, and the run builds no more than one per cache length
    (a power of two), however many prompt lengths it saw and however its rows split into
    micro-batches."""
    import torch._dynamo
    torch._dynamo.reset()
    monkeypatch.setattr(M, "compile_backend", lambda device: ("eager", "graph capture only"))
    shapes, widths = set(), set()
    real = M._static_cache
    monkeypatch.setattr(M, "_static_cache", lambda model, rows, length: shapes.add(
        (rows, length)) or real(model, rows, length))
    real_sample = M.sample
    monkeypatch.setattr(M, "sample", lambda model, tok, prompts, **kw: kw.get("compile") and
                        widths.update(len(p) for p in M.encode_prompts(tok, prompts))
                        or real_sample(model, tok, prompts, **kw))
    # 24 rollouts a step in calls of 10: 10, 10 and 4 rows filled up to 10
    spied_run(tmp_path, tiny_dir, monkeypatch, "--compile", "--max-new-tokens", "40",
              "--sample-micro-batch", "10", steps=10)
    rows = [json.loads(l) for l in open(tmp_path / "rl" / "metrics.jsonl")]
    compiles = [r["compiles"] for r in rows if "reward" in r]
    lengths = {M.static_cache_length(w + 40) for w in widths}
    assert len(compiles) == 10 and compiles[0] >= 1
    assert len(widths) >= 4 and len(lengths) >= 2 and {r for r, _ in shapes} == {10}
    assert sum(compiles) <= len(lengths)


# --- checkpoints and resume -----------------------------------------------------------------

def fake_reward(text, gold):
    """Deterministic reward with variance, so an untrained model gets real gradients."""
    return float(len(text) % 3 == 0)


def _final_state(run_dir):
    model, _ = M.load_model(os.path.join(run_dir, "checkpoint"), device="cpu")
    metrics = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    for m in metrics:
        for k in list(m):
            if rundir.is_timing(k):
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
    (["--gamma", "-0.1"], "gamma"), (["--steps", "-1"], "steps"), (["--steps", "0"], "steps"),
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


# --- seeds: --seed reaches every draw, and evaluation draws nothing from the run -----------

def _training_rows(run_dir):
    """metrics.jsonl without timings and evaluations: what training computed."""
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if not (rundir.is_timing(k) or k.startswith("eval"))}
            for r in rows if "reward" in r]


def test_seed_reaches_sampling_and_evaluations_draw_nothing_from_the_run(tmp_path, tiny_dir,
                                                                         monkeypatch):
    """One problem only, so two runs can differ through torch's sampling alone: the same seed
    gives the same rollouts, another seed others, and evaluating after every step (greedy and
    sampled alike draw from a fork of the streams) changes nothing the run trains on."""
    problem = W.TinyWorld().problems("rl", "train")[:1]
    monkeypatch.setattr(data, "train_problems", lambda spec, **kw: problem)

    def run(name, seed, eval_every):
        train.main(small_run(tmp_path, tiny_dir, "--seed", str(seed), "--eval-every",
                             str(eval_every), "--eval-limit", "3", "--p-feedback", "0.5",
                             name=name, steps=3))
        responses = [json.loads(l)["response"] for l in open(tmp_path / name / "samples.jsonl")]
        return responses, _training_rows(tmp_path / name)

    a, a_again, b = run("a", 0, 0), run("a2", 0, 0), run("b", 1, 0)
    with_eval = run("a_eval", 0, 1)
    assert a == a_again and a == with_eval
    assert a[0] != b[0]
    rows = [json.loads(l) for l in open(tmp_path / "a_eval" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "eval/rl-test" in r] == [0, 1, 2, 3]
