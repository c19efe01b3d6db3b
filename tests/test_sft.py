"""Stage 1: seed data, the response-only loss, and sft.py end to end on a small model."""
import json
import math

import pytest
import safetensors.torch
import torch

import sft
from support import curriculum
from support import bootstrap
from support import model as M
from support import world as W
from conftest import build_tiny
from support.errors import UserError, run_cli

WORLD = W.TinyWorld()


def test_labels_cover_the_response_and_eos_only():
    _, tok = build_tiny()
    exs = curriculum.tiny_seed_data(WORLD, 12, 0, list(curriculum.SKILLS))
    enc = sft.encode_examples(tok, exs, 400)
    ids, attn, labels, _ = sft.collate(enc, tok.pad_token_id, "cpu")
    for (seq, n_prompt, _), ex, row, lab in zip(enc, exs, ids, labels):
        n_resp = len(seq) - n_prompt
        assert (lab != -100).sum() == n_resp
        kept = lab[lab != -100].tolist()
        assert kept[-1] == tok.eos_token_id
        assert tok.decode(kept[:-1]) == tok.decode(tok(ex["response"]).input_ids)
        assert (lab[:n_prompt] == -100).all()


def test_batched_encoding_equals_one_example_at_a_time():
    _, tok = build_tiny()
    exs = curriculum.tiny_seed_data(WORLD, 40, 1, list(curriculum.SKILLS))
    for max_len in (400, 24):   # 24 truncates the longer prompts from the left
        batched = sft.encode_examples(tok, exs, max_len)
        single = [sft.encode_examples(tok, [e], max_len)[0] for e in exs]
        assert batched == single
        assert all(len(ids) <= max_len and 0 <= n < len(ids) for ids, n, _ in batched)
    assert any(len(ids) == 24 for ids, _, _ in sft.encode_examples(tok, exs, 24))   # truncated
    assert sft.encode_examples(tok, [], 10) == []


def test_a_few_steps_lower_the_loss():
    model, tok = build_tiny()
    exs = curriculum.tiny_seed_data(WORLD, 32, 0, ["solve"])
    enc = sft.encode_examples(tok, exs, 200)
    before = sft.heldout_loss(model, enc, tok.pad_token_id, "cpu", 32)
    sft.train_sft(model, tok, enc, enc, steps=30, batch_size=16, lr=3e-3, warmup=3,
                  device="cpu", seed=0, log_every=30)
    after = sft.heldout_loss(model, enc, tok.pad_token_id, "cpu", 32)
    assert after < 0.7 * before


def test_no_skill_seeding_keeps_only_solve():
    exs = curriculum.tiny_seed_data(WORLD, 200, 0, ["solve"])
    assert {e["skill"] for e in exs} == {"solve", "solve_rl"}   # the rl priors are the world's
    exs = curriculum.tiny_seed_data(WORLD, 2000, 0, list(curriculum.SKILLS))
    assert {e["skill"] for e in exs} == set(curriculum.TINY_MIX)


def test_summarize_targets_follow_the_outcomes():
    from pool import parse_summary
    import random
    rng = random.Random(0)
    for _ in range(200):
        ex = curriculum.tiny_example(WORLD, "summarize", rng)
        principles, pitfalls = parse_summary(ex["response"])
        lines = [l for l in ex["prompt"].split("\n") if l.startswith("Attempt")]
        right = [W.procedure_text(W.parse_procedures(l)[0]) for l in lines if "(right)" in l]
        wrong = [W.procedure_text(W.parse_procedures(l)[0]) for l in lines if "(wrong)" in l]
        assert principles == right and pitfalls == wrong


def test_sft_main_end_to_end(tmp_path, monkeypatch):
    from support import config
    looks = []   # the thread count is followed once per training step
    monkeypatch.setattr(config.Threads, "follow", lambda self: looks.append(1))
    out = tmp_path / "sft"
    sft.main(["--out", str(out), "--steps", "4", "--examples", "300", "--hidden", "32",
              "--layers", "1", "--batch-size", "8", "--max-new-tokens", "4"])
    assert len(looks) == 4
    for f in ("config.json", "model.safetensors", "tokenizer.json", "sft_config.json",
              "sft_report.json"):
        assert (out / f).exists(), f
    report = json.loads((out / "sft_report.json").read_text())
    assert set(report["zero_shot_accuracy"]) == {"rl-test", "sft-test", "unseen-test"}
    assert set(report["skills"]) <= set(curriculum.TINY_MIX) and report["history"]
    assert all(math.isfinite(h["heldout_loss"]) for h in report["history"])
    # a second run refuses to overwrite
    with pytest.raises(UserError, match="--overwrite"):
        sft.main(["--out", str(out), "--steps", "1"])


def test_a_killed_sft_resumes_to_the_model_an_uninterrupted_one_makes(tmp_path, monkeypatch):
    """Killed in step 7 of 12 with a checkpoint at step 5, `--resume` makes the same weights and
    report as the run that was never stopped (its batches, moments, schedule and random streams
    all put back: 8 batches are drawn at a time, so steps 6-8 use the checkpoint's and step 9
    draws anew), and refuses flags that would change what it computes."""
    flags = ["--steps", "12", "--examples", "300", "--hidden", "32", "--layers", "1",
             "--batch-size", "8", "--max-new-tokens", "4", "--eval-limit", "8", "--threads", "1",
             "--checkpoint-every", "5", "--log-every", "2", "--lr", "1e-2", "--warmup", "2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    sft.main(["--out", str(whole), *flags])
    assert not (whole / "checkpoint").exists()   # the finished model replaced it
    from support import config
    steps, killed = [], []   # Threads.follow runs once at the start of every training step

    def killed_in_step_7(self):
        steps.append(1)
        if len(steps) == 7 and not killed:
            killed.append(1)
            raise KeyboardInterrupt
    monkeypatch.setattr(config.Threads, "follow", killed_in_step_7)
    with pytest.raises(KeyboardInterrupt):
        sft.main(["--out", str(cut), *flags])
    state = torch.load(cut / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 5 and state["flags"]["device_used"] == "cpu"
    with pytest.raises(UserError, match="--overwrite"):   # not resuming: refused, kept
        sft.main(["--out", str(cut), *flags])
    with pytest.raises(UserError, match="lr 0.01 -> 0.02"):
        sft.main(["--out", str(cut), "--resume", *flags, "--lr", "2e-2"])
    steps.clear()
    sft.main(["--out", str(cut), "--resume", *flags])
    assert len(steps) == 7   # steps 6-12, none again
    a, b = (safetensors.torch.load_file(d / "model.safetensors") for d in (whole, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def computed(d):   # the report less the machine's timings and where it resumed
        r = json.loads((d / "sft_report.json").read_text())
        return {k: v for k, v in r.items() if not k.startswith(("seconds", "resumed"))} | {
            "history": [{k: v for k, v in h.items() if not k.startswith("t_")}
                        for h in r["history"]]}
    assert computed(cut) == computed(whole)
    report = json.loads((cut / "sft_report.json").read_text())
    assert [h["step"] for h in report["history"]] == [2, 4, 6, 8, 10, 12]   # none lost
    assert report["resumed_from_step"] == 5
    t = [h["t_train"] for h in report["history"]]
    assert t == sorted(t)   # the time before the stop is kept, not counted from 0 again


def test_an_sft_checkpoint_resumes_only_what_it_holds(tmp_path):
    """Another device, or a model that trains other weights (LoRA or not), is refused with the
    way out; another output directory (the checkpoint moved with it) is not."""
    import random
    from support import rundir

    def parts(trainable=True):
        model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        model[1].requires_grad_(trainable)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), random.Random(0)
    flags = {"lr": 0.01, "out": "a", "device_used": "cpu"}
    model, opt, sched, rng = parts()
    rundir.SFTCheckpoint(str(tmp_path), 5, 20, flags, False).save(
        5, model, opt, sched, rng, [[1, 2]], [], (1.0, 0.0))
    moved = rundir.SFTCheckpoint(str(tmp_path), 5, 20, flags | {"out": "b"}, True)
    assert moved.restore(*parts())[:2] == (5, [[1, 2]])
    with pytest.raises(UserError, match="device_used 'cpu' -> 'cuda'.*delete"):
        rundir.SFTCheckpoint(str(tmp_path), 5, 20, flags | {"device_used": "cuda"},
                             True).restore(*parts())
    with pytest.raises(UserError, match="other weights"):
        rundir.SFTCheckpoint(str(tmp_path), 5, 20, flags, True).restore(*parts(False))


def test_user_seed_data_errors(tmp_path):
    bad = tmp_path / "seed.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(UserError, match=r"seed.jsonl line 2: missing or empty field 'response'"):
        bootstrap.load_seed_jsonl(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(UserError, match=r"line 1: not valid JSON"):
        bootstrap.load_seed_jsonl(str(bad))
    with pytest.raises(UserError, match="cannot read"):
        bootstrap.load_seed_jsonl(str(tmp_path / "none.jsonl"))


def test_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(sft.main, ["--preset", "giant"])
    assert e.value.code == 2 and "unknown preset" in capsys.readouterr().err


def test_soft_target_is_the_cross_entropy_against_the_prior():
    """A one-hot soft target gives exactly the ordinary loss; the designed prior gives
    -sum p log q at the procedure token; and training on it moves q to the prior. The last is
    asserted as a property (KL(p || q) falls to a small fraction of where it started, and q
    ranks the procedures as p does), not as the third digit of an optimizer's end point, which
    differs between CPU kernels (AVX2 / AVX512)."""
    model, tok = build_tiny()
    exs = [e for e in curriculum.tiny_seed_data(WORLD, 400, 0, list(curriculum.SKILLS))
           if e["skill"] == "solve_rl"][:8]
    assert exs and all("procedure_prior" in e for e in exs)
    enc = sft.encode_examples(tok, exs, 200)
    hard = [(ids, n, None) for ids, n, _ in enc]
    one_hot = [(ids, n, ([ids[n]], [1.0])) for ids, n, _ in enc]
    want = M.batch_loss(model, sft.collate(hard, tok.pad_token_id, "cpu"))
    got = M.batch_loss(model, sft.collate(one_hot, tok.pad_token_id, "cpu"))
    assert torch.allclose(want, got, atol=1e-5)
    # the soft term is -sum p log q at the position that predicts the procedure token
    ids, n, (token_ids, probs) = enc[0]
    batch = sft.collate([enc[0]], tok.pad_token_id, "cpu")
    with torch.no_grad():
        logq = torch.log_softmax(model(batch[0]).logits[0].float(), -1)
    hard_rest = [(ids, n + 1, None)]   # the same row without its procedure token's loss
    n_resp = len(ids) - n
    rest = M.batch_loss(model, sft.collate(hard_rest, tok.pad_token_id, "cpu")) * (n_resp - 1)
    soft_term = -(torch.tensor(probs) * logq[n - 1, token_ids]).sum()
    assert torch.allclose(M.batch_loss(model, batch) * n_resp, rest + soft_term, atol=1e-4)
    # trained on one family's soft target alone, the model's procedure distribution is the prior
    family = WORLD.families_of("rl")[3]
    rng = __import__("random").Random(0)
    exs = [curriculum.tiny_example(WORLD, "solve_rl", rng, (family, family.pitfall))
           for _ in range(16)]
    enc = sft.encode_examples(tok, exs, 200)
    ids, n, (token_ids, probs) = enc[0]
    p = torch.tensor(probs)

    def q_now():
        with torch.no_grad():
            return torch.softmax(model(torch.tensor([ids[:n]])).logits[0, -1], -1)[token_ids]

    def kl(q):   # KL(p || q) over the procedures (q renormalized over them)
        q = q / q.sum()
        return float((p * (p / q).log()).sum())

    before = kl(q_now())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        M.batch_loss(model, sft.collate(enc, tok.pad_token_id, "cpu")).backward()
        opt.step()
    q = q_now()
    assert kl(q) < 0.1 * before and kl(q) < 0.1, (q, probs)
    assert torch.equal(torch.argsort(q, descending=True)[:2], torch.argsort(p, descending=True)[:2])
    assert q.sum() > 0.95   # and almost all mass is on the procedures
