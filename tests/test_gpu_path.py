"""The GPU path, checked on the CPU: every tensor of an update on the model's device, float32
master weights that small learning rates really move, bf16 autocast, memory-bounded log-prob
micro-batches, CUDA random streams in checkpoints, and out-of-memory as one line."""
import argparse
import random

import pytest
import torch

from support import config
from support import model as M
from support import rundir
import train
from support import world as W
from conftest import build_tiny
from support.errors import UserError, oom_hint, run_cli

WORLD = W.TinyWorld()


def update_args(**kw):
    base = dict(beta=0.04, inner_epochs=2, temperature=1.0, logprob_tokens=64, clip=0.2,
                aggregation="seq-mean", max_new_tokens=8, max_grad_norm=1.0,
                score_context="prompt", is_cap=2.0)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture
def meta_friendly(monkeypatch):
    """On the `meta` device tensors have shapes and devices but no values, so every op runs
    with torch's real device checks (a CPU tensor mixed into a meta op raises, as it would on
    CUDA), while reading a value back into Python is impossible. Those few reads (.item(),
    bool(), float()) are answered with 0 here, only for meta tensors."""
    for name, fake in (("item", 0.0), ("__bool__", True), ("__float__", 0.0)):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, real=real, fake=fake: fake if self.is_meta else real(self))


@pytest.mark.parametrize("score_context", ["prompt", "corrected"])
def test_update_keeps_every_tensor_on_the_models_device(meta_friendly, score_context):
    """Rollouts come back from sampling on the CPU; the update must move what the loss needs to
    the model's device. With the model on `meta`, any CPU tensor left in the loss raises.
    `corrected` also builds importance weights (rows scored under another prompt)."""
    model, tok = build_tiny()
    probs = WORLD.problems("rl", "train")[:2]
    texts = [p["question"] for p in probs for _ in range(4)]
    torch.manual_seed(0)
    rollouts = M.sample(model, tok, texts, max_new_tokens=6)   # on the CPU, as in train_step
    assert rollouts.response_ids.device.type == "cpu"
    policy, ref = model.to("meta"), build_tiny()[0].to("meta")
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    adv = torch.tensor([1., -1., .5, -.5] * 2)                 # CPU, as grpo computes it
    score_ids = list(rollouts.prompt_ids)
    if score_context == "corrected":   # the first rows scored under another prompt
        score_ids[:2] = [rollouts.prompt_ids[-1]] * 2
    stats = train.update(policy, ref, opt, rollouts, score_ids, adv,
                         update_args(score_context=score_context))
    assert stats is not None
    assert all(p.device.type == "meta" for p in policy.parameters())


def test_the_meta_check_catches_a_cpu_tensor(meta_friendly):
    """The check above has teeth: the loss with a CPU mask and meta log-probs raises."""
    import grpo
    logp = torch.zeros(2, 3, device="meta", requires_grad=True)
    with pytest.raises(Exception, match="device"):
        grpo.policy_loss(logp, logp.detach(), None, torch.ones(2), torch.ones(2, 3), beta=0.0)


def test_policy_keeps_float32_weights_and_a_small_lr_moves_them(tiny_dir):
    """bf16 weights would swallow AdamW steps of lr 1e-6 (measured: 2% of weights moved in 20
    steps, norm weights never). The trained model stays float32 under every precision; only a
    frozen model stores bf16 weights (its Linear ones: tests/test_precision.py)."""
    model, _ = M.load_model(tiny_dir, device="cpu", precision="bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.autocast_dtype == torch.bfloat16
    frozen, _ = M.load_model(tiny_dir, device="cpu", precision="bf16", frozen=True)
    assert frozen.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert frozen.autocast_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    for _ in range(20):
        opt.zero_grad()
        with M.autocast(model):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
    moved = [(before[k] != v).float().mean().item() for k, v in model.state_dict().items()
             if v.is_floating_point() and before[k].numel() > 1]
    assert min(moved) > 0.2, moved   # every weight matrix and norm vector moved
    assert sum(moved) / len(moved) > 0.5


def test_autocast_runs_the_forward_in_bf16(tiny_dir):
    model, tok = M.load_model(tiny_dir, device="cpu", precision="bf16")
    seen = []
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    M.token_logprobs(model, [[5, 6, 7]], torch.tensor([[8, 9]]), torch.ones(1, 2))
    assert seen == [torch.bfloat16]
    model, tok = M.load_model(tiny_dir, device="cpu", precision="fp32")
    seen.clear()
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    M.token_logprobs(model, [[5, 6, 7]], torch.tensor([[8, 9]]), torch.ones(1, 2))
    assert seen == [torch.float32]


def test_precision_auto_is_bf16_only_on_a_capable_gpu(monkeypatch):
    """(Which GPU is asked, and emulation: tests/test_precision.py.)"""
    assert M.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert M.resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))
    assert M.resolve_precision("auto", torch.device("cuda")) == "fp32"
    with pytest.raises(UserError):
        M.resolve_precision("fp8", torch.device("cpu"))
    # the tiny world keeps float32 everywhere, the real presets use auto
    assert config.PRESETS["tiny"]["precision"] == "fp32"
    assert config.PRESETS["qwen"]["precision"] == "auto"


@pytest.mark.parametrize("budget", [1, 20, 50, 10_000])
def test_token_chunks_bound_the_padded_tokens(budget):
    rng = random.Random(budget)
    lengths = [rng.randint(3, 30) for _ in range(40)]
    chunks = M.token_chunks(lengths, budget)
    assert sorted(i for c in chunks for i in c) == list(range(40))   # every row once
    for c in chunks:
        assert len(c) == 1 or len(c) * max(lengths[i] for i in c) <= budget
    if budget >= 40 * 30:
        assert chunks == [list(range(40))]   # it all fits: one chunk, rows in order


def test_logprob_memory_is_bounded_by_the_token_budget(tiny_dir):
    """The update never scores more padded tokens in one forward than --logprob-tokens."""
    model, tok = M.load_model(tiny_dir, device="cpu")
    seen = []
    real = model.forward

    def spy(*a, **kw):
        seen.append(kw["input_ids"].numel())
        return real(*a, **kw)
    model.forward = spy
    probs = WORLD.problems("rl", "train")[:4]
    torch.manual_seed(0)
    r = M.sample(model, tok, [p["question"] for p in probs for _ in range(4)], max_new_tokens=8)
    seen.clear()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train.update(model, None, opt, r, r.prompt_ids, torch.ones(16),
                 update_args(beta=0.0, inner_epochs=1, logprob_tokens=100))
    assert len(seen) > 1 and max(seen) <= 100


def test_checkpoint_keeps_every_random_stream(monkeypatch):
    """Python's, torch's CPU and (on a GPU) every CUDA generator's state are saved and
    restored. On this CPU machine the CUDA calls are stand-ins that record what they got.
    (Fewer GPUs on resume: tests/test_precision.py.)"""
    saved_cuda = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["cuda-state"])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: saved_cuda.append([s]))
    rng = random.Random(5)
    torch.manual_seed(5)
    state = rundir.rng_state(rng)
    assert state["cuda"] == ["cuda-state"]
    want_py, want_torch = rng.random(), torch.rand(3)
    rng2 = random.Random(0)
    torch.manual_seed(0)
    rundir.set_rng_state(rng2, state)
    assert rng2.random() == want_py and torch.equal(torch.rand(3), want_torch)
    assert saved_cuda == [["cuda-state"]]


def test_out_of_memory_is_one_line_naming_the_flag(tiny_dir, tmp_path, monkeypatch, capsys):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 19.00 GiB")
    monkeypatch.setattr(train, "update", oom)
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, ["--init", tiny_dir, "--run-dir", str(tmp_path / "rl"), "--steps",
                             "1", "--problems-per-step", "2", "--group-size", "2",
                             "--eval-every", "0", "--no-final-eval"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert "out of memory" in err and "--logprob-tokens" in err
    with pytest.raises(UserError, match="--sample-micro-batch"):
        with oom_hint("sampling", "lower --sample-micro-batch"):
            raise torch.cuda.OutOfMemoryError("x")


@pytest.mark.parametrize("when", ["step 0", "the periodic evaluation", "the final evaluation"])
def test_out_of_memory_while_evaluating_is_one_line_too(tiny_dir, tmp_path, monkeypatch, capsys,
                                                        when):
    import evaluate
    real, calls = evaluate._evaluate, []
    first_oom = {"step 0": 1, "the periodic evaluation": 4, "the final evaluation": 7}[when]

    def oom_on_call(*a, **k):   # 3 test sets per evaluation: step 0, step 1, the final modes
        calls.append(1)
        if len(calls) == first_oom:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(*a, **k)
    monkeypatch.setattr(evaluate, "_evaluate", oom_on_call)
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, ["--init", tiny_dir, "--run-dir", str(tmp_path / "rl"), "--steps",
                             "1", "--problems-per-step", "2", "--group-size", "2",
                             "--eval-every", "1", "--eval-limit", "2"])
    err = [l for l in capsys.readouterr().err.strip().splitlines()
           if not l.startswith("lanpo: step")]   # progress lines (no terminal here)
    assert e.value.code == 2 and len(err) == 1, err
    assert "out of memory while evaluating" in err[0] and "--sample-micro-batch" in err[0]
