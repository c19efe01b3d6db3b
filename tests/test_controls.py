"""The controls that a LANPO result has to survive: the placebo context (same blocks and counts,
no experience of the run in them), the corrected off-policy estimator (plain scoring with a
truncated importance weight, checked against its gradient written out by hand), and the
per-family success counts that say whether GRPO ever saw a success on a family."""
import json
import os
import random
import re

import pytest
import torch

import grpo
from support import controls as C
from support import model as M
import prompts
import train
from support import world as W
from support.errors import run_cli
from pool import Entry, Pool
from test_train import WORLD, ReadGrads, args_for, grads, prompts_of, small_run

LESSON_LINE = "Principles: (.*)\nPitfalls: (.*)"

def lessons_of(prompt):
    """(principles, pitfalls) listed in a feedback-aware prompt, or None without that block."""
    m = re.search(LESSON_LINE, prompt)
    if not m:
        return None
    split = lambda s: [] if s == prompts.NONE else s.split(prompts.LIST_SEP)   # noqa: E731
    return split(m.group(1)), split(m.group(2))


def pool_with(problems, principles, pitfalls, attempt):
    """Every problem has 4 attempts; every summary states the same given lessons."""
    pool = Pool()
    for p in problems:
        pool.add([Entry(p["id"], p["question"], attempt(p, j), float(j % 2), 0, principles,
                        pitfalls, {"family": p["family"]}) for j in range(4)])
    return pool


def test_placebo_has_the_real_arms_blocks_and_counts_and_none_of_the_pool():
    """Where `both` puts a lessons block with n principles and m pitfalls and an earlier
    attempt, `placebo` puts the same blocks with as many items; none of the pool's text."""
    probs = WORLD.problems("rl", "train")
    pool = pool_with(probs[:60], ["POOLPRINCIPLE one", "POOLPRINCIPLE two"], ["POOLPITFALL"],
                     lambda p, j: f"POOLATTEMPT {j} of {p['id']}")
    queries = probs[:3] + probs[100:103]
    real, real_ctx, real_found = prompts_of(queries, pool, args_for(feedback="both", gamma=0.0),
                                            random.Random(3))
    fake, fake_ctx, fake_found = prompts_of(queries, pool,
                                            args_for(feedback="placebo", gamma=0.0),
                                            random.Random(3))
    assert fake_ctx == real_ctx and any(real_ctx)
    assert fake_found == real_found   # the same retrieval (the metrics stay comparable)
    for r, f in zip(real, fake):
        assert ("Attempt:" in r) == ("Attempt:" in f)
        lr, lf = lessons_of(r), lessons_of(f)
        assert (lr is None) == (lf is None)
        if lr:
            assert (len(lf[0]), len(lf[1])) == (len(lr[0]), len(lr[1])) == (2, 1)
            assert all(W.parse_procedures(x) for x in lf[0] + lf[1])   # procedures, at random
        assert "POOL" not in f
    assert any("POOL" in r for r in real)


def test_placebo_content_does_not_depend_on_the_pools_content():
    """Two pools of the same shape, opposite lessons and attempts: the real arm's prompts
    differ, the placebo's are identical (its content comes from the random stream alone)."""
    probs = WORLD.problems("rl", "train")
    pools = [pool_with(probs[:60], [W.procedure_text(pr)], [W.procedure_text(pf)],
                       lambda p, j, pr=pr: W.solution_text(pr, *p["numbers"]))
             for pr, pf in ((("add", "mul"), ("sub", "sub")), (("mul", "sub"), ("add", "add")))]
    queries = probs[:4]
    for feedback, same in (("both", False), ("placebo", True)):
        out = [prompts_of(queries, pool, args_for(feedback=feedback, gamma=0.0),
                          random.Random(5))[0] for pool in pools]
        assert (out[0] == out[1]) == same, feedback


def test_placebo_content_does_not_depend_on_the_problems_true_procedure():
    """The tiny-world placebo is uniform guessing over the nine procedures: over many draws for
    problems of one family, its worked attempt and its listed procedures are spread evenly over
    the nine, the family's true procedure no more often than any other (a placebo that knew the
    truth would carry the right answer in every prompt)."""
    from collections import Counter
    family = WORLD.families_of("rl")[0]
    probs = [p for p in WORLD.problems("rl", "train") if p["family"] == family.name][:30]
    pool = pool_with(probs, ["a principle"], ["a pitfall", "another"], lambda p, j: "x")
    rng, attempts, listed = random.Random(11), Counter(), Counter()
    for _ in range(30):
        for p in probs:
            attempts[C.placebo_attempt(p, pool, rng, WORLD).split(":")[0].strip()] += 1
            principles, pitfalls = C.placebo_lessons(p, pool, 1, 2, rng, WORLD)
            listed.update(principles + pitfalls)
    true = W.procedure_text(family.procedure)
    for counts in (attempts, listed):
        n = sum(counts.values())
        assert len(counts) == len(W.PROCEDURES)   # every procedure appears
        # each near n / 9 (binomial sd about 0.3 sqrt(n) / 9 * 3; 5 sd of room)
        assert all(abs(c - n / 9) < 5 * (n * (1 / 9) * (8 / 9)) ** 0.5 for c in counts.values())
        assert counts[true] < n / 9 + 5 * (n * (1 / 9) * (8 / 9)) ** 0.5


def test_placebo_on_real_data_uses_another_problems_lessons_never_its_own():
    probs = [{"id": f"q{i}", "question": f"how many {fruit} does {name} have"}
             for i, (fruit, name) in enumerate((f, n) for f in ("apples", "pears", "plums")
                                               for n in ("anna", "boris"))]
    pool = Pool()
    for p in probs:
        pool.add([Entry(p["id"], p["question"], f"attempt of {p['id']}", 1.0, 0,
                        [f"principle of {p['id']}"], [f"pitfall of {p['id']}"], {})
                  for _ in range(2)])
    a = args_for(feedback="placebo", gamma=0.0, data="jsonl")
    for p in probs:
        texts, has_ctx, _ = prompts_of([p], pool, a, random.Random(0), world=None)
        assert any(has_ctx)
        for t in texts:
            assert f"of {p['id']}\n" not in t + "\n" and f"of {p['id']};" not in t
        assert any("principle of q" in t for t in texts)


def test_placebo_on_real_data_matches_the_real_lessons_counts():
    """Real data, --placebo-from pool: the placebo has as many principles and pitfalls as the
    real context, drawing on as many other problems as it takes (one problem's lessons may hold
    fewer), and repeating theirs when all of them hold fewer."""
    pool = Pool()
    for i in range(6):   # each problem distilled one principle and one pitfall
        pool.add([Entry(f"q{i}", f"question {i}", f"attempt {i}", 1.0, 0, [f"principle {i}"],
                        [f"pitfall {i}"], {})])
    for seed in range(20):
        principles, pitfalls = C.placebo_lessons({"id": "q0"}, pool, 3, 2, random.Random(seed))
        assert len(principles) == 3 and len(pitfalls) == 2
        assert not {"principle 0", "pitfall 0"} & set(principles + pitfalls)   # never its own
    # more than the other problems hold: all of theirs, repeated to make up the count
    principles = C.placebo_lessons({"id": "q0"}, pool, 9, 1, random.Random(0))[0]
    assert len(principles) == 9 and set(principles) == {f"principle {i}" for i in range(1, 6)}


def test_placebo_from_a_bank_always_matches_the_counts_and_reads_nothing_of_the_pool():
    """--placebo-from prior: principles, pitfalls and the attempt come from the bank alone (a
    pool full of other lessons changes nothing), as many as asked even past the bank's size."""
    bank = {"principles": ["bp1", "bp2"], "pitfalls": ["bf1"], "attempts": ["ba1", "ba2"]}
    pool = Pool()
    for i in range(4):
        pool.add([Entry(f"q{i}", f"question {i}", f"attempt {i}", 1.0, 0, [f"principle {i}"],
                        [f"pitfall {i}"], {})])
    for n_principles, n_pitfalls in ((0, 0), (1, 1), (2, 1), (3, 4), (7, 2)):
        for seed in range(5):
            principles, pitfalls = C.placebo_lessons({"id": "q0"}, pool, n_principles,
                                                     n_pitfalls, random.Random(seed), bank=bank)
            assert len(principles) == n_principles and len(pitfalls) == n_pitfalls
            assert set(principles) <= {"bp1", "bp2"} and set(pitfalls) <= {"bf1"}
            # all different while the bank has enough
            assert len(set(principles)) == min(n_principles, 2)
            assert C.placebo_attempt({"id": "q0"}, pool, random.Random(seed),
                                     bank=bank) in bank["attempts"]


def jsonl(path, problems):
    path.write_text("".join(json.dumps({"id": p["id"], "question": p["question"],
                                        "answer": p["answer"]}) + "\n" for p in problems))
    return str(path)


def bank_run(tmp_path, tiny_dir, *extra, name="rl", steps=2):
    """A real-data placebo run of the tiny model: training problems from a JSONL file, its
    bank written about unseen-family problems of another file."""
    train_file = jsonl(tmp_path / "train.jsonl", W.TinyWorld().problems("rl", "train")[:12])
    bank_file = jsonl(tmp_path / "bank.jsonl", W.TinyWorld().problems("unseen", "test")[:12])
    argv = small_run(tmp_path, tiny_dir, "--data", train_file, "--feedback", "placebo",
                     "--p-feedback", "1.0", "--gamma", "0", "--placebo-data", bank_file,
                     "--placebo-problems", "5", *extra, name=name, steps=steps)
    return [a for a in argv if a != "--no-final-eval"] + ["--no-final-eval"]


def fake_summaries(model, tok, problems, texts, rewards, args, rng):
    """A summary per group that names its problem (a random model writes none that parse)."""
    return [([f"principle of {p['id']}"], [f"pitfall of {p['id']}", f"second pitfall of "
                                          f"{p['id']}"]) for p in problems]


def test_placebo_bank_is_the_starting_models_lessons_about_problems_outside_the_run(
        tmp_path, tiny_dir, monkeypatch):
    """Every placebo context of a real-data run holds the bank's lessons and attempts alone:
    written about the --placebo-data problems before step 1, never a training problem's; the
    bank is kept in the run directory."""
    monkeypatch.setattr(train, "summarize_groups", fake_summaries)
    seen, real_sample = [], M.sample

    def spy(model, tok, prompt_texts, *a, **kw):
        seen.append(list(prompt_texts))
        return real_sample(model, tok, prompt_texts, *a, **kw)
    monkeypatch.setattr(M, "sample", spy)
    train.main(bank_run(tmp_path, tiny_dir, steps=4))
    bank = json.load(open(tmp_path / "rl" / C.BANK_FILE))
    ids = bank["problems"]   # a JSONL file's rows are named <file name>/<row>
    assert len(ids) == 5 and all(i.startswith("bank/") for i in ids)
    assert bank["principles"] == [f"principle of {i}" for i in ids]
    assert len(bank["attempts"]) == 5 * 4 and seen[0][:4] == [seen[0][0]] * 4   # G each
    contexts = [t for call in seen[1:] for t in call if "Lessons from similar" in t]
    assert len(contexts) >= 3 * 4   # at least a step's worth (step 1's pool is empty)
    for t in contexts:
        principles, pitfalls = lessons_of(t)
        assert principles and set(principles) <= set(bank["principles"])
        assert pitfalls and set(pitfalls) <= set(bank["pitfalls"])
        assert "of train/" not in t   # nothing a training problem taught the run
    # the intra-sample block (a problem seen before): one of the bank's attempts, verbatim
    attempts = [t for t in contexts if "Attempt: " in t]
    assert attempts
    assert all(any(f"Attempt: {a}\n" in t for a in bank["attempts"]) for t in attempts)


def test_a_resumed_placebo_run_draws_from_the_same_bank(tmp_path, tiny_dir, monkeypatch):
    from test_train import _final_state, fake_reward
    monkeypatch.setattr(train, "summarize_groups", fake_summaries)
    monkeypatch.setattr(train, "reward", fake_reward)
    train.main(bank_run(tmp_path, tiny_dir, name="straight", steps=3))
    train.main(bank_run(tmp_path, tiny_dir, name="resumed", steps=1))
    train.main(bank_run(tmp_path, tiny_dir, "--resume", name="resumed", steps=3))
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert a[1] == b[1] and a[2] == b[2]
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    # without its bank a resumed run stops with a one-line error instead of drawing anew
    os.remove(tmp_path / "resumed" / C.BANK_FILE)
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, bank_run(tmp_path, tiny_dir, "--resume", name="resumed", steps=4))
    assert e.value.code == 2


def test_placebo_bank_problems_must_lie_outside_the_training_and_test_sets(tmp_path, tiny_dir,
                                                                           capsys):
    train_problems = W.TinyWorld().problems("rl", "train")[:12]
    argv = bank_run(tmp_path, tiny_dir)
    argv[argv.index("--placebo-data") + 1] = jsonl(tmp_path / "overlap.jsonl",
                                                   train_problems[3:4])
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "also training or test" in err
    assert not (tmp_path / "rl").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--data", "tiny", "--feedback", "placebo", "--placebo-from", "pool"], "real data"),
    (["--data", "gsm8k", "--placebo-from", "prior"], "need --feedback placebo"),
    (["--data", "math", "--feedback", "placebo"], "--placebo-data"),
    (["--data", "gsm8k", "--feedback", "placebo", "--placebo-from", "pool",
      "--placebo-data", "svamp"], "prior"),
    (["--data", "gsm8k", "--feedback", "placebo", "--placebo-problems", "0"], "at least 1"),
])
def test_placebo_source_flags_are_checked(argv, needle):
    from support import config
    from support.errors import UserError
    with pytest.raises(UserError, match=needle):
        config.train_args(argv)


def test_placebo_source_defaults():
    from support import config
    a = config.train_args(["--data", "gsm8k", "--feedback", "placebo"])
    assert (a.placebo_from, a.placebo_data) == ("prior", "svamp")
    a = config.train_args(["--data", "gsm8k"])   # not a placebo run: nothing set
    assert (a.placebo_from, a.placebo_data) == (None, None)
    assert config.train_args(["--data", "gsm8k", "--feedback", "placebo", "--placebo-from",
                              "pool"]).placebo_data is None


def test_placebo_is_refused_with_raw_trajectories(tmp_path, tiny_dir, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, small_run(tmp_path, tiny_dir, "--feedback", "placebo",
                                      "--inter-format", "raw"))
    assert e.value.code == 2 and "placebo" in capsys.readouterr().err


# --- the corrected off-policy estimator --------------------------------------------------------

def off_policy_rollouts(tok, lengths, width=8):
    """Six responses (random tokens) of two problems: in each group of three, two were sampled
    under a feedback-aware prompt and one under the plain prompt."""
    probs = WORLD.problems("rl", "train")[:2]
    sampled = [prompts.feedback_prompt(p["question"], ["add then mul"], ["sub then add"])
               if j < 2 else prompts.solve_prompt(p["question"]) for p in probs for j in range(3)]
    plain = [prompts.solve_prompt(p["question"]) for p in probs for _ in range(3)]
    ids = torch.randint(4, len(tok), (len(lengths), width),
                        generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()
    r = M.Rollouts(M.encode_prompts(tok, sampled), ids, mask, [""] * len(lengths),
                   torch.zeros(len(lengths), dtype=torch.bool))
    return r, M.encode_prompts(tok, plain)


def corrected_gradient(model, ref, r, plain_ids, adv, cap, beta, detach=True, weighted=True):
    """By hand, seq-mean: -1/N sum_i 1/|y_i| sum_t w_it (A_i - beta * k3'-term), written as the
    per-token loss w_it * (-A_i * rho_it + beta * k3_it), with rho = exp(lp - lp.detach()) and
    w_it = min(pi(y_it | x) / pi(y_it | x, c), cap) (1 where the row was sampled plainly)."""
    model.zero_grad(set_to_none=True)
    lp = M.token_logprobs(model, plain_ids, r.response_ids, r.response_mask)
    with torch.no_grad():
        behavior = M.token_logprobs(model, r.prompt_ids, r.response_ids, r.response_mask)
        ref_lp = M.token_logprobs(ref, plain_ids, r.response_ids, r.response_mask)
    w = torch.minimum(torch.exp((lp.detach() if detach else lp) - behavior),
                      torch.tensor(float(cap)))
    sampled_plainly = torch.tensor([a == b for a, b in zip(r.prompt_ids, plain_ids)])
    w = torch.where(sampled_plainly[:, None], torch.ones_like(w), w)   # behavior == target
    if not weighted:
        w = torch.ones_like(w)
    m = r.response_mask
    d = ref_lp - lp
    per_token = w * (-adv[:, None] * torch.exp(lp - lp.detach()) + beta * (torch.expm1(d) - d))
    loss = ((per_token * m).sum(1) / m.sum(1)).mean()
    loss.backward()
    return grads(model), w.detach()


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_corrected_scoring_gradient_is_the_truncated_importance_weighted_one(tiny_dir, beta):
    """update(--score-context corrected) == the gradient by hand, and differs from the same
    gradient with the weight dropped (plain scoring) or not detached."""
    model, tok = M.load_model(tiny_dir, device="cpu")
    ref, _ = M.load_model(tiny_dir, device="cpu")
    torch.manual_seed(0)   # the same draw whichever tests ran before
    with torch.no_grad():   # move the policy away from the reference, so the KL term acts
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    r, plain_ids = off_policy_rollouts(tok, [3, 5, 8, 2, 6, 4])
    score_ids = [plain_ids[i] for i in range(6)]
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.7, 0.4])
    cap = 1.1   # a random model: ratios 0.86-1.29, so some are capped and some not
    want, w = corrected_gradient(model, ref, r, plain_ids, adv, cap, beta)
    # micro-batches add the same terms in another order: float32 rounding of the largest ones
    # (measured up to 3e-7 against a largest entry of 0.3), not a per-entry relative error
    atol = 1e-5 * want.abs().max().item()
    m = r.response_mask.bool()
    # the weights are informative: some capped, some below 1
    assert (w[m] == cap).any() and (w[m] < 1).any()
    for budget in (100_000, 40):
        a = args_for(score_context="corrected", is_cap=cap, beta=beta, max_new_tokens=8,
                     max_grad_norm=1e9, logprob_tokens=budget)
        opt = ReadGrads(model.parameters(), lr=0.0)   # lr 0: read the gradient
        stats = train.update(model, ref if beta else None, opt, r, score_ids, adv, a)
        got = opt.seen
        assert torch.allclose(got, want, rtol=1e-4, atol=atol), budget
        assert stats["is_weight"] != 1.0
    unweighted, _ = corrected_gradient(model, ref, r, plain_ids, adv, cap, beta, weighted=False)
    attached, _ = corrected_gradient(model, ref, r, plain_ids, adv, cap, beta, detach=False)
    assert not torch.allclose(got, unweighted, rtol=1e-2)
    assert not torch.allclose(got, attached, rtol=1e-2)
    # and --score-context plain is exactly the unweighted one
    a = args_for(score_context="plain", beta=beta, max_new_tokens=8, max_grad_norm=1e9)
    opt = ReadGrads(model.parameters(), lr=0.0)
    train.update(model, ref if beta else None, opt, r, score_ids, adv, a)
    assert torch.allclose(opt.seen, unweighted, rtol=1e-4, atol=atol)


def test_truncated_is_weight_is_capped_detached_and_one_on_policy():
    target = torch.tensor([[0.0, -1.0, -3.0]], requires_grad=True)
    behavior = torch.tensor([[0.0, -2.0, -1.0]])
    w = C.truncated_is_weight(target, behavior, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, torch.exp(torch.tensor(-2.0))]]))
    assert not w.requires_grad
    with pytest.raises(ValueError):
        C.truncated_is_weight(target, behavior, cap=0.0)


def test_policy_loss_weights_each_tokens_surrogate_and_kl():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    w = torch.tensor([[0.5, 2.0]])
    loss, _ = grpo.policy_loss(logp, logp.detach(), ref, torch.tensor([1.0]), mask, beta=0.1,
                               is_weight=w)
    d = ref - logp.detach()
    want = (w * (-1.0 + 0.1 * (torch.expm1(d) - d))).mean()
    assert torch.allclose(loss, want)
    # a weight handed over with a graph (computed from the policy's own log-probs) is detached:
    # the gradient is the one of the same weight as a constant
    behavior = torch.tensor([[-1.2, -1.5]])
    got = []
    for weight in (torch.exp(logp - behavior), torch.exp(logp - behavior).detach()):
        logp.grad = None
        grpo.policy_loss(logp, logp.detach(), ref, torch.tensor([1.0]), mask, beta=0.1,
                         is_weight=weight)[0].backward()
        got.append(logp.grad.clone())
    assert torch.allclose(got[0], got[1])


# --- counting successes per family ----------------------------------------------------------

def test_family_successes_count_each_rl_familys_right_rollouts_by_kind():
    rl = WORLD.problems("rl", "train")
    sft = WORLD.problems("sft", "train")
    probs = [rl[0], rl[60], sft[0]]
    G = 4
    rewards = [1, 0, 0, 1,   0, 0, 0, 0,   1, 1, 1, 1]
    ctx = [True, True, False, False] * 3
    assert rl[0]["family"] != rl[60]["family"]
    got = WORLD.family_successes(probs, rewards, ctx, G)
    # [right plain, plain, right feedback-aware, feedback-aware]; sft families not counted
    assert got == {rl[0]["family"]: [1, 2, 1, 2], rl[60]["family"]: [0, 2, 0, 2]}


def test_metrics_hold_per_family_successes_that_add_up(tmp_path, tiny_dir, monkeypatch):
    from support import config
    looks = []   # (and the thread count is followed once per step)
    monkeypatch.setattr(config.Threads, "follow", lambda self: looks.append(1))
    train.main(small_run(tmp_path, tiny_dir, steps=2))
    assert len(looks) == 2
    rows = [json.loads(x) for x in open(tmp_path / "rl" / "metrics.jsonl")]
    for row in rows:
        fams = row["rl_family_successes"]
        n_rl = sum(v[1] + v[3] for v in fams.values())
        assert n_rl % 4 == 0 and all(v[0] <= v[1] and v[2] <= v[3] for v in fams.values())
        if row["train_acc_rl_plain"] is not None:
            right = sum(v[0] for v in fams.values()) / sum(v[1] for v in fams.values())
            assert abs(right - row["train_acc_rl_plain"]) < 1e-9
