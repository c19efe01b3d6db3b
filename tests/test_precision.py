"""The bf16 GPU path, checked on the CPU (bf16 autocast exists there too) with tiny Llama and
Qwen2 models built from a config: which precision "auto" picks, a KL of exactly 0 to the
reference at step 0 and a positive one once the policy has moved, a KV cache of one dtype,
finite logits for left-padded rows, and the paper-cuts of running on a GPU (checkpoints moved
between hosts, fewer GPUs, the model's own device, gradients freed, saving dtypes). CUDA itself
is stood in for by monkeypatched torch.cuda functions."""
import json
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from support import model as M
from support import rundir
import train
from support import world as W
from test_gpu_path import update_args as gpu_update_args
from conftest import build_tiny

WORLD = W.TinyWorld()


def build_tiny_qwen(seed=0):
    """A Qwen2 (biases on q/k/v, grouped-query attention, tied embeddings) on the tiny world's
    tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = W.tiny_tokenizer(WORLD)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, initializer_range=0.2, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None))
    return model.eval(), tok


BUILDERS = {"llama": build_tiny, "qwen2": build_tiny_qwen}


@pytest.fixture(scope="module", params=list(BUILDERS))
def saved(request, tmp_path_factory):
    """(arch, directory) of a tiny model saved like a hub checkpoint."""
    model, tok = BUILDERS[request.param]()
    path = tmp_path_factory.mktemp(request.param) / "model"
    M.save_model(model, tok, str(path))
    return request.param, str(path)


def update_args(**kw):
    """test_gpu_path's update flags, with one inner epoch and one log-prob micro-batch."""
    return gpu_update_args(**{"inner_epochs": 1, "logprob_tokens": 10_000, **kw})


def rollouts_of(model, tok, n_problems=2, G=4, max_new_tokens=8, seed=0, compile=False):
    """Rollouts of prompts of different lengths (plain and feedback-aware), so rows are
    left-padded, as in train_step."""
    import prompts
    probs = WORLD.problems("rl", "train")[:n_problems]
    texts = [prompts.solve_prompt(p["question"]) if j % 2 else
             prompts.feedback_prompt(p["question"], ["add then mul"], ["mul then mul"])
             for p in probs for j in range(G)]
    torch.manual_seed(seed)
    return M.sample(model, tok, texts, max_new_tokens=max_new_tokens, compile=compile)


# --- 2. precision "auto" ----------------------------------------------------------------------

@pytest.fixture
def two_gpus(monkeypatch):
    """cuda:0 is a Turing card (7.5: bf16 only emulated), cuda:1 an Ampere (8.0), and the
    current device is 0. torch.cuda.is_bf16_supported() says yes for both, as it does by
    default for an emulating GPU."""
    capability = {0: (7, 5), 1: (8, 0)}

    def get_device_capability(device=None):
        index = getattr(device, "index", device)
        return capability[0 if index is None else index]
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_is_bf16_only_on_the_chosen_gpu_when_it_does_bf16_natively(two_gpus, capsys):
    assert M.resolve_precision("auto", torch.device("cuda:1")) == "bf16"
    assert M.resolve_precision("auto", torch.device("cuda:0")) == "fp32"   # emulated only
    assert M.resolve_precision("auto", torch.device("cuda")) == "fp32"     # the current one
    assert M.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert M.resolve_precision("bf16", torch.device("cuda:0")) == "bf16"  # asked for: given
    assert M.choose_precision("auto", torch.device("cuda:1")) == "bf16"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("precision: bf16") and "cuda:1" in out


def test_the_precision_used_is_in_config_json_and_every_metrics_row(tiny_dir, tmp_path, capsys,
                                                                    monkeypatch):
    """Also the KL of a whole run: 0 at step 1 (policy = reference), positive once the policy
    has moved, as it would not be if train.py made the policy its own reference."""
    monkeypatch.setattr(train, "reward", lambda text, gold: float(len(text) % 3 == 0))
    run = tmp_path / "rl"
    train.main(["--init", tiny_dir, "--run-dir", str(run), "--steps", "3",
                "--problems-per-step", "2", "--group-size", "4", "--max-new-tokens", "6",
                "--eval-every", "2", "--eval-limit", "2", "--no-final-eval", "--lr", "1e-2"])
    assert json.loads((run / "config.json").read_text())["precision_used"] == "fp32"
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["precision"] == "fp32" for r in rows)
    assert "precision: fp32" in capsys.readouterr().out
    assert rows[1]["kl"] == 0.0 and rows[3]["kl"] > 1e-6, [r.get("kl") for r in rows]


# --- 3. the KL to the reference ---------------------------------------------------------------

def reference(path, policy, precision, how):
    """The reference as train.load_models makes it: loaded again (a resumed run) or a frozen copy
    of the policy just loaded (a run from the start)."""
    if how == "copy":
        return M.frozen_copy(policy)
    return M.load_model(path, device="cpu", precision=precision, frozen=True)[0] \
        .requires_grad_(False)


@pytest.mark.parametrize("how", ["load", "copy"])
def test_kl_to_the_reference_is_zero_at_step_zero_under_bf16_autocast(saved, how):
    """The policy (float32 weights under bf16 autocast) and the reference loaded from the same
    checkpoint (or copied from the policy) score every token identically, so the k3 KL of the
    first update is exactly 0, and the reference costs about bf16's memory. (A reference loaded
    in bf16 outright, the earlier scheme, gave 2e-7 per token on the Llama and 2e-4 on the
    Qwen2 here.)"""
    arch, path = saved
    # gradient checkpointing (the qwen preset's) recomputes the forward in backward only
    policy, tok = M.load_model(path, device="cpu", precision="bf16",
                               grad_checkpointing=arch == "qwen2")
    ref = reference(path, policy, "bf16", how)
    assert ref is not policy and not any(p.requires_grad for p in ref.parameters())
    r = rollouts_of(policy, tok)
    with torch.no_grad():
        a = M.token_logprobs(policy, r.prompt_ids, r.response_ids, r.response_mask)
        b = M.token_logprobs(ref, r.prompt_ids, r.response_ids, r.response_mask)
    assert torch.equal(a, b)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    adv = torch.tensor([1., -1., .5, -.5] * 2)
    stats = train.update(policy, ref, opt, r, r.prompt_ids, adv, update_args())
    assert stats["kl"] == 0.0
    # about bf16's memory: every Linear weight not tied to the embeddings is bf16
    tied = {id(ref.get_input_embeddings().weight)}
    for mod in ref.modules():
        if isinstance(mod, torch.nn.Linear) and id(mod.weight) not in tied:
            assert mod.weight.dtype == torch.bfloat16
    assert ref.get_input_embeddings().weight.dtype == torch.float32
    assert ref.autocast_dtype == torch.bfloat16


@pytest.mark.parametrize("how", ["load", "copy"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kl_is_to_the_frozen_sft_model_not_the_current_policy(saved, precision, how):
    """Once the policy has moved, the logged KL is positive (an update that scored the reference
    with the current policy would log 0 and get no KL gradient), and the reference's weights
    never change."""
    arch, path = saved
    policy, tok = M.load_model(path, device="cpu", precision=precision)
    ref = reference(path, policy, precision, how)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    kls = []
    for step in range(3):
        r = rollouts_of(policy, tok, seed=step)
        adv = torch.tensor([1., -1., .5, -.5] * 2)
        kls.append(train.update(policy, ref, opt, r, r.prompt_ids, adv, update_args())["kl"])
    assert kls[0] == 0.0 and kls[-1] > 1e-6, kls
    after = ref.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- 4. the KV cache --------------------------------------------------------------------------

def cached_dtypes(model, tok, compile=False):
    """The dtypes of every key and value tensor the KV cache held during sampling."""
    seen = set()

    def hook(module, args, out):
        cache = out.past_key_values
        for layer in cache.layers:
            seen.update({layer.keys.dtype, layer.values.dtype})
    handle = model.register_forward_hook(hook)
    try:
        rollouts_of(model, tok, max_new_tokens=4, compile=compile)
    finally:
        handle.remove()
    return seen


def test_kv_cache_holds_one_dtype_under_bf16_autocast(saved, monkeypatch):
    """Under autocast the key after RoPE would be float32 (bf16 key times float32 cos) and the
    value bf16: the cache holds both in bf16, for the policy and for a frozen model, and so
    does --compile's static cache (here uncompiled: the cache is what is checked)."""
    arch, path = saved
    monkeypatch.setattr(M, "compile_backend", lambda device: (None, "not here"))
    for frozen in (False, True):
        model, tok = M.load_model(path, device="cpu", precision="bf16", frozen=frozen)
        assert cached_dtypes(model, tok) == {torch.bfloat16}
    assert cached_dtypes(model, tok, compile=True) == {torch.bfloat16}
    model, tok = M.load_model(path, device="cpu", precision="fp32")
    assert cached_dtypes(model, tok) == {torch.float32}
    assert cached_dtypes(model, tok, compile=True) == {torch.float32}


def test_sampling_and_scoring_agree_under_bf16_autocast(saved):
    """The one-dtype cache changes nothing attention computes: the log-probs generate() sampled
    from equal the trainer's (the first PPO ratio is 1) to bf16 tolerance."""
    arch, path = saved
    model, tok = M.load_model(path, device="cpu", precision="bf16")
    rows = M.encode_prompts(tok, [p["question"] for p in WORLD.problems("rl", "train")[:3]])
    ids, attn = M._left_pad(rows, tok.pad_token_id, "cpu")
    torch.manual_seed(0)
    with torch.no_grad(), M.autocast(model):
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, top_k=0,
                             max_new_tokens=6, pad_token_id=tok.pad_token_id, output_logits=True,
                             return_dict_in_generate=True, **M._one_dtype_cache(model))
    resp = out.sequences[:, ids.shape[1]:]
    mask, _ = M.response_mask(resp, M.stop_ids(model, tok))
    want = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)
    want = want.gather(-1, resp[..., None])[..., 0] * mask
    with torch.no_grad():
        got = M.token_logprobs(model, rows, resp, mask)
    torch.testing.assert_close(got, want, atol=0.05, rtol=0)


# --- 5. left-padded rows that attend to nothing -----------------------------------------------

def nan_for_empty_rows_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                            scale=None, enable_gqa=False):
    """scaled_dot_product_attention as some CUDA kernels compute it: a row of the mask that is
    all False gives NaN (torch's CPU kernel gives 0 there, so it cannot show the problem)."""
    if enable_gqa:
        key = key.repeat_interleave(query.shape[1] // key.shape[1], 1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], 1)
    scores = (query @ key.transpose(-1, -2)).float() * (scale or query.shape[-1] ** -0.5)
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, -1).to(value.dtype) @ value


PROMPTS = ("tom has 8 .", "tom has 8 and does selaf with 1 and 2 . how many now ?")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_left_padded_batch_is_finite_where_a_kernel_gives_nan(saved, precision, monkeypatch):
    arch, path = saved
    monkeypatch.setattr(F, "scaled_dot_product_attention", nan_for_empty_rows_sdpa)
    model, tok = M.load_model(path, device="cpu", precision=precision)
    M.check_finite_left_padded(model, tok, PROMPTS)   # finite, real positions unchanged
    r = rollouts_of(model, tok)                       # sampling and scoring left-pad too
    with torch.no_grad():
        lp = M.token_logprobs(model, r.prompt_ids, r.response_ids, r.response_mask)
    assert torch.isfinite(lp).all()


def test_the_check_catches_nan_of_an_unguarded_model(saved, monkeypatch):
    """The emulated kernel has teeth: on plain sdpa attention the left-padded batch is NaN."""
    arch, path = saved
    monkeypatch.setattr(F, "scaled_dot_product_attention", nan_for_empty_rows_sdpa)
    model, tok = M.load_model(path, device="cpu", precision="bf16")
    model.set_attn_implementation("sdpa")
    with pytest.raises(AssertionError, match="non-finite"):
        M.check_finite_left_padded(model, tok, PROMPTS)


def test_the_guard_changes_no_real_position(saved):
    """With torch's own kernel, the guarded mask and the plain one give bit-identical logits at
    every real position: only rows that attended to nothing change."""
    arch, path = saved
    model, tok = M.load_model(path, device="cpu", precision="fp32")
    assert model.config._attn_implementation == M.PAD_SAFE_SDPA
    rows = M.encode_prompts(tok, list(PROMPTS))
    ids, attn = M._left_pad(rows, tok.pad_token_id, "cpu")
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        guarded = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
        model.set_attn_implementation("sdpa")
        plain = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    real = attn.bool()
    assert torch.equal(guarded[real], plain[real])


# --- 6. requirements ---------------------------------------------------------------------------

def test_requirements_ask_for_a_torch_that_transformers_5_uses():
    """transformers 5.x disables its torch integration below torch 2.6 (the models would not
    load), so the lower bound, and the comment that explains it, say 2.6."""
    import os
    import re
    from packaging.version import Version
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "requirements.txt")
    text = open(path).read()
    [bound] = re.findall(r"^torch>=([\d.]+)", text, flags=re.M)
    assert Version(bound) >= Version("2.6")
    assert not re.search(r"torch >= ?2\.[0-5]\b", text)   # no comment with an older bound
    assert Version(torch.__version__.split("+")[0]) >= Version(bound)


# --- 8. paper-cuts ----------------------------------------------------------------------------

def test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu_host(tmp_path, monkeypatch):
    """torch.load restores each tensor where it was saved unless told otherwise: a state.pt
    written on cuda:1 would not load on a host without that GPU."""
    import torch.serialization as ser
    monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:1")   # "saved on cuda:1"
    (tmp_path / "ckpt").mkdir()
    torch.save({"step": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}}},
               tmp_path / "ckpt" / "state.pt")
    monkeypatch.undo()
    state = rundir.load_state(str(tmp_path / "ckpt"))
    assert state["step"] == 3 and state["optimizer"]["state"][0]["exp_avg"].device.type == "cpu"


def test_cuda_random_streams_restore_on_fewer_gpus(monkeypatch, capsys):
    """A checkpoint of a 2-GPU host resumed where 1 GPU is visible: the first stream is
    restored, the second left out with a one-line warning."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda s, d="cuda": restored.append((int(s[0]), d)))
    rng = random.Random(0)
    state = {"python": rng.getstate(), "torch": torch.get_rng_state(),
             "cuda": [torch.tensor([10], dtype=torch.uint8), torch.tensor([11], dtype=torch.uint8)]}
    rundir.set_rng_state(random.Random(1), state)
    assert restored == [(10, 0)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 CUDA random streams" in err
    restored.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rundir.set_rng_state(random.Random(1), state)
    assert restored == [(10, 0), (11, 1)]
    assert capsys.readouterr().err == ""


def test_peak_memory_is_read_from_the_models_device(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: seen.append(d))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                        lambda d=None: seen.append(d) or 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved",
                        lambda d=None: seen.append(d) or 4 * 2**30)
    dev = torch.device("cuda:1")
    assert M.peak_memory(dev) == 3.0   # read, then counting starts anew, on the model's device
    assert seen == [dev, dev, dev]
    seen.clear()
    assert M.peak_memory(dev, reserved=True) == (3.0, 4.0)   # what the allocator held too
    seen.clear()
    assert M.peak_memory(torch.device("cpu")) is None and seen == []
    assert M.peak_memory(torch.device("cpu"), reserved=True) == (None, None)


def test_gradients_are_freed_after_the_optimizer_step():
    """Gradients (a float32 copy of every weight) must not stay allocated through the next
    step's sampling."""
    model, tok = build_tiny()
    r = rollouts_of(model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for inner in (1, 2):
        stats = train.update(model, None, opt, r, r.prompt_ids, torch.tensor([1., -1.] * 4),
                             update_args(beta=0.0, inner_epochs=inner))
        assert stats is not None and stats["grad_norm"] > 0
        assert all(p.grad is None for p in model.parameters())


def test_saved_models_keep_the_checkpoints_dtype_and_checkpoints_float32(tmp_path):
    """A model loaded from a bf16 checkpoint (as Qwen2.5's are) trains in float32 and is saved
    (final/, sft/) in bf16, tied weights once; the run's checkpoint/ keeps float32 and notes
    the dtype for a resumed run. A float32 model (the tiny world) is saved as it is."""
    model, tok = build_tiny_qwen()
    hub = tmp_path / "hub"
    model.to(torch.bfloat16).save_pretrained(hub)
    tok.save_pretrained(hub)
    policy, tok = M.load_model(str(hub), device="cpu")
    assert policy.save_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    with torch.no_grad():   # a trained weight that bf16 cannot hold exactly
        policy.model.norm.weight.add_(1e-4)
    M.save_model(policy, tok, str(tmp_path / "final"))
    saved = load_file(tmp_path / "final" / "model.safetensors")
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in saved   # tied: written once
    assert json.loads((tmp_path / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    assert torch.equal(saved["model.norm.weight"], policy.model.norm.weight.to(torch.bfloat16))
    assert all(p.dtype == torch.float32 for p in policy.parameters())   # still training float32
    again, _ = M.load_model(str(tmp_path / "final"), device="cpu")
    assert again.save_dtype == torch.bfloat16

    opt = torch.optim.AdamW(policy.parameters())
    rundir.save_checkpoint(str(tmp_path / "run"), 1, policy, tok, opt, _EmptyPool(),
                           random.Random(0), {})
    ckpt = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert {v.dtype for v in ckpt.values()} == {torch.float32}
    assert torch.equal(ckpt["model.norm.weight"], policy.model.norm.weight)
    assert rundir.load_state(str(tmp_path / "run" / "checkpoint"))["save_dtype"] == torch.bfloat16

    tiny, tiny_tok = build_tiny()
    M.save_model(tiny, tiny_tok, str(tmp_path / "tiny"))
    loaded, _ = M.load_model(str(tmp_path / "tiny"), device="cpu")
    M.save_model(loaded, tiny_tok, str(tmp_path / "tiny2"))
    assert {v.dtype for v in load_file(tmp_path / "tiny2" / "model.safetensors").values()} == \
        {torch.float32}


class _EmptyPool:
    def save(self, path):
        open(path, "w").close()
