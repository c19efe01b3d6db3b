"""It learns: a few GRPO steps of train.py raise the probability of the rewarded answers, and
the same run with the reward turned around lowers it. The whole loop runs (sampling, the real
reward against each problem's gold, advantages, log-probs, the optimizer), so an update that
pushes the wrong way, or rewards paired with the wrong problem, shows here."""
import json

import pytest
import torch

from support import model as M
import prompts
import sft
import train
from support import world as W
from conftest import build_tiny
from reward import reward

WORLD = W.TinyWorld()


def lookup_task():
    """Four one-word questions (rl family names) with known answers. Each question is torn
    between two answers: its own gold and the next question's gold, so a reward paired with
    another problem's gold rewards a wrong answer here."""
    names = [f.name for f in WORLD.families_of("rl")[:4]]
    golds = [str(2 + 4 * i) for i in range(4)]
    problems = [{"id": f"lookup/{i}", "question": name, "answer": golds[i]}
                for i, name in enumerate(names)]
    options = [(golds[i], golds[(i + 1) % 4]) for i in range(4)]
    return problems, options


@pytest.fixture(scope="module")
def torn_model(tmp_path_factory):
    """A tiny model taught in about two seconds to answer each question with `#### x`, x one
    of its two options at 50/50: it knows the format and the options, not which one is right."""
    problems, options = lookup_task()
    model, tok = build_tiny(seed=0)
    examples = [{"prompt": prompts.solve_prompt(p["question"]), "response": f"#### {x}"}
                for p, opts in zip(problems, options) for x in opts]
    batch = sft.collate(sft.encode_examples(tok, examples, 64), tok.pad_token_id, "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = M.batch_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = tmp_path_factory.mktemp("torn")
    M.save_model(model, tok, str(out / "sft"))
    with open(out / "lookup.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in problems)
    with open(out / "test.jsonl", "w") as f:   # never evaluated (--no-final-eval), but a run
        f.write(json.dumps({"question": "unused", "answer": "0"}) + "\n")   # must name one
    return str(out / "sft"), str(out / "lookup.jsonl"), problems


def p_gold(model_dir, problems):
    """Exact probability of the response `#### gold` + EOS, per problem (no sampling)."""
    model, tok = M.load_model(model_dir, device="cpu")
    prompt_ids = M.encode_prompts(tok, [prompts.solve_prompt(p["question"]) for p in problems])
    resp = torch.tensor([tok(f"#### {p['answer']}", add_special_tokens=False).input_ids +
                         [tok.eos_token_id] for p in problems])
    with torch.no_grad():
        lp = M.token_logprobs(model, prompt_ids, resp, torch.ones(resp.shape))
    return lp.sum(1).exp()


def grpo_run(tmp_path, init, data_path, name):
    train.main(["--init", init, "--data", data_path, "--run-dir", str(tmp_path / name),
                "--eval-data", data_path.replace("lookup.jsonl", "test.jsonl"),
                "--steps", "10", "--problems-per-step", "4", "--group-size", "8",
                "--max-new-tokens", "4", "--lr", "3e-3", "--p-feedback", "0",
                "--eval-every", "0", "--ckpt-every", "10", "--no-final-eval"])
    return str(tmp_path / name / "final")


def test_grpo_raises_the_rewarded_answer_and_the_reversed_reward_lowers_it(
        torn_model, tmp_path, monkeypatch):
    """Guards the sign of the update and the reward-to-gold pairing, end to end."""
    init, data_path, problems = torn_model
    before = p_gold(init, problems)
    assert ((before > 0.3) & (before < 0.6)).all(), before   # torn between two answers
    after = p_gold(grpo_run(tmp_path, init, data_path, "right"), problems)
    # measured: 0.42-0.50 -> 0.68-0.77 (8 steps with seeds 1-4: +0.13 at least); a flipped
    # sign, or golds paired with the wrong problems, drive most of them toward 0 instead
    assert (after > before + 0.1).all(), (before, after)
    # control: reward the other answer instead, and the same run unlearns the gold (-> ~0)
    monkeypatch.setattr(train, "reward", lambda text, gold: 1.0 - reward(text, gold))
    reversed_ = p_gold(grpo_run(tmp_path, init, data_path, "reversed"), problems)
    assert (reversed_ < before - 0.2).all(), (before, reversed_)
