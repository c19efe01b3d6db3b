"""experiments/step_mechanism.py measures the run's own step: from a checkpoint, the batch it
builds is the run's next batch and its paper-scored update is, bit for bit, the update the run
itself takes next; the other scorings differ only where a row has a context; "none" is the
same optimizer step with a zero gradient (Adam's moments alone)."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import step_mechanism as SM  # noqa: E402
import train  # noqa: E402
from support import data  # noqa: E402
from support import world as W  # noqa: E402
from test_controls import fake_summaries  # noqa: E402
from test_train import _final_state, fake_reward, small_run  # noqa: E402


def copies_at_checkpoint(run_dir):
    args, model, ref, tok, state, rng, pool = SM.load_checkpoint(run_dir)
    train_set, _ = data.problems(args.data, args.eval_data, args.eval_limit,
                                 args.question_field, args.answer_field)
    batch = SM.next_batch(model, tok, pool, train_set, args, rng, W.TinyWorld())
    return model, batch, SM.updated_copies(model, ref, tok, state["optimizer"], batch, args)


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_paper_scored_copy_is_the_runs_own_next_update(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(train, "summarize_groups", fake_summaries)
    monkeypatch.setattr(train, "reward", fake_reward)
    argv = small_run(tmp_path, tiny_dir, "--p-feedback", "0.5", "--gamma", "0", steps=2)
    train.main(argv)
    model, batch, models = copies_at_checkpoint(str(tmp_path / "rl"))
    assert sum(batch[1]) > 0 and not all(batch[1])   # rows with and without a context
    train.main(small_run(tmp_path, tiny_dir, "--resume", steps=3))
    after = _final_state(tmp_path / "rl")[0]
    prompt = models["prompt"].state_dict()
    assert all(torch.equal(prompt[k], after[k]) for k in after)
    # the other scorings are other updates of the same batch; none is the untouched model
    assert not same(models["plain"], models["prompt"])
    assert not same(models["corrected"], models["plain"])
    assert not same(models["none"], model)   # warm moments move it with a zero gradient
    assert all(not same(models[s], models["none"]) for s in SM.SCORINGS)


def test_without_a_context_row_the_three_scorings_are_one_update(tmp_path, tiny_dir,
                                                                  monkeypatch):
    """GRPO's batch (and step 1's, with an empty pool) has no context row: prompt, plain and
    corrected score every row under the plain prompt, so the updates are identical."""
    monkeypatch.setattr(train, "reward", fake_reward)
    train.main(small_run(tmp_path, tiny_dir, "--p-feedback", "0", steps=1))
    _, batch, models = copies_at_checkpoint(str(tmp_path / "rl"))
    assert not any(batch[1])
    assert same(models["prompt"], models["plain"]) and same(models["plain"], models["corrected"])


def test_the_held_out_target_is_the_rl_test_gold_solutions(tiny_model):
    model, tok = tiny_model
    world = W.TinyWorld()
    prompt_ids, resp, mask = SM.held_out(tok, world)
    problems = world.problems("rl", "test")
    assert len(prompt_ids) == resp.shape[0] == len(problems) == 216
    first = problems[0]
    n = int(mask[0].sum())
    assert tok.decode(resp[0, :n - 1].tolist()).split() == world.solution(first).split()
    assert resp[0, n - 1] == tok.eos_token_id
    lp, p_proc = SM.zero_shot(model, (prompt_ids, resp, mask), 1.0)
    assert lp.shape == (216,) and bool((lp < 0).all()) and bool(((0 < p_proc) & (p_proc < 1)).all())


def test_the_ratio_interval_resamples_seeds_in_pairs_and_refuses_an_unbounded_ratio():
    """ratio_interval: the same draw of SFT seeds for the numerator and the denominator (so a
    gain that is always the same share of plain's has the interval [share, share]); it holds
    the ratio of the means; and it is None where plain's resampled gain is often not above 0."""
    den = [1.0, 3.0, 0.5, 2.0, 4.0]
    assert SM.ratio_interval([0.2 * x for x in den], den) == [pytest.approx(0.2),
                                                            pytest.approx(0.2)]
    num = [0.1, 0.9, 0.3, 0.2, 0.5]
    lo, hi = SM.ratio_interval(num, den)
    assert lo < sum(num) / sum(den) < hi and 0 < lo and hi < 1
    assert SM.ratio_interval(num, [1.0, -1.0, 1.0, -1.0, 0.5]) is None
