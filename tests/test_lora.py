"""LoRA (lora.py, `--lora-rank`): B = 0 starts at the base model, a training step moves the
adapters and nothing else, the KL reference is the base with adapters off, the saved model is
merged into plain weights, and a LoRA run resumes exactly. On a tiny Qwen2 (CPU, no download)
and on the tiny world's Llama for train.py runs."""
import json
import os

import pytest
import torch

from support import lora
from support import model as M
import sft
from support import bootstrap
import train
from test_qwen import qwen_dir, solving_sampler  # noqa: F401 (a fixture)
from test_train import fake_reward, small_run

IDS = torch.tensor([[5, 9, 17, 33, 2, 8, 40], [3, 3, 12, 44, 71, 6, 1]])


def adapted(path, rank=4, alpha=8.0):
    model, tok = M.load_model(path, device="cpu")
    return lora.add_lora(model, rank, alpha), tok


def trained_step(model, steps=3):
    """A few AdamW steps of the SFT loss on the trainable parameters, as sft.py takes them."""
    opt = torch.optim.AdamW(lora.trainable(model), lr=1e-2)
    labels = IDS.clone()
    labels[:, :3] = -100
    batch = (IDS, torch.ones_like(IDS), labels, [None, None])
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        M.batch_loss(model, batch).backward()
        opt.step()
    model.eval()
    return opt


def test_b_zero_init_gives_the_base_model(qwen_dir):  # noqa: F811
    base, _ = M.load_model(qwen_dir, device="cpu")
    model, _ = adapted(qwen_dir)
    assert len(lora.adapters(model)) == 7 * model.config.num_hidden_layers
    assert all((m.lora_B == 0).all() and (m.lora_A != 0).any() for m in lora.adapters(model))
    assert torch.equal(model(input_ids=IDS).logits, base(input_ids=IDS).logits)


def test_a_training_step_moves_only_the_adapters(qwen_dir):  # noqa: F811
    model, _ = adapted(qwen_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = trained_step(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(("lora_A", "lora_B"))
               for g in opt.param_groups for p in g["params"])
    for k, v in model.state_dict().items():
        if k.endswith(("lora_A", "lora_B")):
            assert not torch.equal(v, before[k]), k
        else:
            assert torch.equal(v, before[k]), k
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_reference_log_probs_are_the_base_models(qwen_dir):  # noqa: F811
    base, _ = M.load_model(qwen_dir, device="cpu")
    model, _ = adapted(qwen_dir)
    trained_step(model)
    ref = lora.BaseModel(model)
    prompts, resp, mask = [[5, 9, 17], [3, 12]], IDS[:, :4], torch.ones(2, 4)
    want = M.token_logprobs(base, prompts, resp, mask)
    assert torch.equal(M.token_logprobs(ref, prompts, resp, mask), want)
    assert not torch.allclose(M.token_logprobs(model, prompts, resp, mask), want)  # it learned
    assert lora.adapters(model)[0].adapter_on   # switched back on afterwards
    assert M._accepts(ref, "logits_to_keep")    # the reference keeps model.py's shortcut


def test_saved_model_is_merged_and_loads_as_a_plain_model(qwen_dir, tmp_path):  # noqa: F811
    model, tok = adapted(qwen_dir)
    trained_step(model)
    lora.save_model(model, tok, str(tmp_path / "merged"))
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert not any("lora" in k for k in saved)
    plain, _ = M.load_model(str(tmp_path / "merged"), device="cpu")
    assert not lora.is_lora(plain)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=IDS).logits, model(input_ids=IDS).logits,
                              atol=1e-5)
        base, _ = M.load_model(qwen_dir, device="cpu")
        assert not torch.allclose(plain(input_ids=IDS).logits, base(input_ids=IDS).logits)


def test_bf16_autocast_keeps_the_base_in_bf16_and_the_adapters_in_float32(qwen_dir):  # noqa: F811
    model, _ = M.load_model(qwen_dir, device="cpu", precision="bf16")
    lora.add_lora(model, 4, 8.0)
    for n, p in model.named_parameters():
        assert p.dtype == (torch.float32 if "lora_" in n else torch.bfloat16), n
    with M.autocast(model):
        assert torch.isfinite(model(input_ids=IDS).logits).all()


def test_sft_with_lora_saves_a_merged_model(qwen_dir, tmp_path, monkeypatch):  # noqa: F811
    from support import data
    problems = data.train_problems("gsm8k", limit=4)
    real_boot = bootstrap.bootstrap_seed_data

    def boot(model, tok, probs, *a, **k):
        assert lora.is_lora(model)
        with monkeypatch.context() as m:
            m.setattr(M, "sample", solving_sampler(problems))
            return real_boot(model, tok, probs, *a, **k)
    monkeypatch.setattr(bootstrap, "bootstrap_seed_data", boot)
    out = tmp_path / "sft"
    sft.main(["--preset", "qwen", "--model", qwen_dir, "--out", str(out), "--lora-rank", "4",
              "--bootstrap-problems", "4", "--steps", "2", "--batch-size", "2", "--lr", "1e-2",
              "--max-new-tokens", "8", "--eval-limit", "1", "--gamma", "0"])
    merged, _ = M.load_model(str(out), device="cpu")
    base, _ = M.load_model(qwen_dir, device="cpu")
    moved = {k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert moved and all(k.split(".")[-2] in lora.TARGETS for k in moved)   # projections only


def test_train_py_with_lora_resumes_exactly_and_saves_merged(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(train, "reward", fake_reward)
    loads = []
    real_load = M.load_model
    monkeypatch.setattr(M, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    flags = ("--lora-rank", "4", "--lr", "1e-2")
    train.main(small_run(tmp_path, tiny_dir, *flags, name="straight", steps=2))
    assert loads == [tiny_dir]   # one copy of the weights: the reference is the base itself
    train.main(small_run(tmp_path, tiny_dir, *flags, name="resumed", steps=1))
    train.main(small_run(tmp_path, tiny_dir, *flags, "--resume", name="resumed", steps=2))
    a, b = (real_load(str(tmp_path / n / "final"), device="cpu")[0].state_dict()
            for n in ("straight", "resumed"))
    init = real_load(tiny_dir, device="cpu")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    moved = {k for k in a if not torch.equal(a[k], init[k])}
    assert moved and all(k.split(".")[-2] in lora.TARGETS for k in moved)
    rows = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
    assert rows[0]["kl"] == 0.0 and not any(r["skipped_update"] for r in rows)
    assert os.path.exists(tmp_path / "resumed" / "checkpoint" / "state.pt")


def test_bad_lora_flags_exit_2(tmp_path, tiny_dir, capsys):
    from support.errors import run_cli
    for main, argv in ((sft.main, ["--lora-rank", "4"]),
                       (sft.main, ["--preset", "qwen", "--lora-rank", "-1"]),
                       (train.main, small_run(tmp_path, tiny_dir, "--lora-rank", "-2")),
                       (train.main, small_run(tmp_path, tiny_dir, "--lora-rank", "4",
                                              "--lora-alpha", "0"))):
        with pytest.raises(SystemExit) as e:
            run_cli(main, argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "lora" in err.lower() and "\n" not in err
    assert not (tmp_path / "rl").exists()


def test_lora_keeps_the_rotary_positions_of_the_base(qwen_dir, tmp_path):  # noqa: F811
    """Under bf16 the base's weights go to bf16, its buffers do not: the rotary table is the
    base model's float32 one, so cos and sin at position 2,000 are the merged model's (which is
    loaded again in float32), and so are the logits there, to bf16's rounding."""
    model, tok = M.load_model(qwen_dir, device="cpu", precision="bf16")
    lora.add_lora(model, 4, 8.0)
    base, _ = M.load_model(qwen_dir, device="cpu")
    want = dict(base.named_buffers())
    tables = [(n, b) for n, b in model.named_buffers() if "inv_freq" in n]
    assert tables and all(b.dtype == torch.float32 and torch.equal(b, want[n]) for n, b in tables)
    lora.save_model(model, tok, str(tmp_path / "merged"))
    merged, _ = M.load_model(str(tmp_path / "merged"), device="cpu")
    x, pos = torch.zeros(1, 1, 8), torch.tensor([[2000]])
    cos, sin = model.model.rotary_emb(x, pos)
    cos_m, sin_m = merged.model.rotary_emb(x, pos)
    assert torch.allclose(cos, cos_m, atol=1e-6) and torch.allclose(sin, sin_m, atol=1e-6)
    ids = torch.randint(3, len(tok), (1, 2001), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with M.autocast(model):
            got = model(input_ids=ids).logits[0, -1].float()
        want_logits = merged(input_ids=ids).logits[0, -1]
    assert (got - want_logits).abs().max() < 0.05 * want_logits.abs().max()
