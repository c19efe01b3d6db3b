"""Tests of the GPU sampling path, on the CPU: what --compile builds and checks before a run,
the grouped-head attention of a compiled decoding step, and the bf16 weights sampling reads.

A GPU confirms the speed and the memory (experiments/gpu_smoke.sh); what is checked here is
that each piece computes what the default path computes, by equality, and that a piece that
breaks (a backend that cannot build, an expanded cache, a stale weight copy) is caught.
"""
import os
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import model as M  # noqa: E402
from conftest import build_tiny  # noqa: E402

PROMPTS = ["add two", "add two and three and four then five"]


@pytest.fixture
def tiny():
    model, tok = build_tiny()
    M._pad_safe_sdpa(model)
    return model, tok


def grouped(seed=0):
    """A random Llama with grouped heads: 4 query heads on 2 key/value heads (n_rep = 2)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, initializer_range=0.2,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    M._pad_safe_sdpa(model)
    return model


# --- 1. the probe: a backend that cannot build kernels means "uncompiled", before the run ----

def test_a_backend_that_cannot_build_falls_back_before_the_run(monkeypatch):
    def cannot_build(gm, example_inputs):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment "
                           "variable.")
    monkeypatch.setattr(M, "COMPILE_BACKEND", cannot_build)
    M.compile_backend.cache_clear()
    try:
        backend, why = M.compile_backend(torch.device("cpu"))
    finally:
        M.compile_backend.cache_clear()
    if not M.shutil.which("c++") and not M.shutil.which("g++") and not M.shutil.which("clang++"):
        pytest.skip("no C++ compiler: the probe is never reached")
    assert backend is None
    assert "could not build a test kernel" in why and "C compiler" in why
    assert "build-essential" in why and "uncompiled" in why


def test_a_backend_that_builds_passes_the_probe(monkeypatch):
    """The probe runs the compiled function and compares its result ("eager": graph capture,
    no kernels); a backend that computes something else is refused too."""
    if not any(M.shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler: the probe is never reached")
    monkeypatch.setattr(M, "COMPILE_BACKEND", "eager")
    M.compile_backend.cache_clear()
    try:
        assert M.compile_backend(torch.device("cpu"))[0] == "eager"

        def wrong(gm, example_inputs):
            return lambda *args: [a * 0 for a in gm(*args)]
        monkeypatch.setattr(M, "COMPILE_BACKEND", wrong)
        M.compile_backend.cache_clear()
        backend, why = M.compile_backend(torch.device("cpu"))
        assert backend is None and "wrong result" in why
    finally:
        M.compile_backend.cache_clear()


# --- 3. grouped heads: no copy of the cache per token, the same attention ---------------------

def test_compiled_decoding_with_grouped_heads_does_not_expand_the_cache(monkeypatch):
    """One decoding step of a model with grouped heads, compiled ("eager" backend: Dynamo
    traces the step as inductor would get it) against the step uncompiled: the same logits,
    and repeat_kv (which copies keys and values to every query head) is never traced."""
    import transformers.integrations.sdpa_attention as S
    model = grouped()
    torch.manual_seed(1)
    ids = torch.randint(3, 40, (3, 9))
    attn = torch.ones_like(ids)
    attn[0, :4] = 0   # left padding: a mask is passed, as in every sampling call
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        prefill = model(input_ids=ids[:, :-1], attention_mask=attn[:, :-1],
                        position_ids=positions[:, :-1], use_cache=True)

        def step(cache):
            return model(input_ids=ids[:, -1:], attention_mask=attn, position_ids=positions[:, -1:],
                         past_key_values=cache).logits
        import copy
        want = step(copy.deepcopy(prefill.past_key_values))
        expanded = []
        real = S.repeat_kv
        monkeypatch.setattr(S, "repeat_kv", lambda h, n: expanded.append(n) or real(h, n))
        torch._dynamo.reset()
        compiled = torch.compile(step, backend="eager", fullgraph=False, dynamic=False)
        got = compiled(copy.deepcopy(prefill.past_key_values))
    torch._dynamo.reset()
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert expanded == []


def test_grouped_heads_fold_is_exact_and_orders_heads_as_repeat_kv():
    """The fold itself, against attention on expanded keys and values (what repeat_kv feeds
    SDPA): query head h reads key/value head h // n_rep. A wrong order is caught."""
    from transformers.integrations.sdpa_attention import repeat_kv
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 6, 1, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., :2] = False

    class Attn(torch.nn.Module):
        num_key_value_groups = 3
    want = torch.nn.functional.scaled_dot_product_attention(
        q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=mask).transpose(1, 2)
    fold = torch.compile(lambda *a: M._sdpa_grouped_heads(Attn(), *a)[0], backend="eager")
    got = fold(q, k, v, mask)
    torch._dynamo.reset()
    assert got.shape == (2, 1, 6, 8) and torch.allclose(got, want, atol=1e-6)


# --- 4. the bf16 weights sampling reads ----------------------------------------------------

def bf16_tiny(tiny):
    model, tok = tiny
    model.autocast_dtype = torch.bfloat16   # what load_model sets under --precision bf16
    return model, tok


def sampled(model, tok, seed=3, **kw):
    torch.manual_seed(seed)
    return M.sample(model, tok, PROMPTS, n=4, max_new_tokens=10, micro_batch=8, **kw)


def test_sampling_from_a_bf16_copy_samples_the_same_tokens(tiny, monkeypatch):
    """--compile on a GPU decodes from bf16 copies of the Linear weights: autocast casts the
    float32 weight to the same bf16 numbers, so the tokens are those of the default sampler at
    a fixed seed (checked on the CPU, where the copy is switched on for the test)."""
    model, tok = bf16_tiny(tiny)
    plain = sampled(model, tok)
    monkeypatch.setattr(M, "SAMPLING_COPY_DEVICES", ("cpu",))
    monkeypatch.setattr(M, "compile_backend", lambda device: (None, "a static cache alone"))
    reads = []
    real = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward",
                        lambda self, x: reads.append(self.weight.dtype) or real(self, x))
    copied = sampled(model, tok, compile=True)
    assert set(reads) == {torch.bfloat16}   # every Linear read its copy
    assert torch.equal(plain.response_ids, copied.response_ids) and plain.texts == copied.texts
    # after sampling the model holds its float32 weights again, the tied output layer is the
    # embedding again, and the copy waits for the next call
    assert all(m.weight.dtype == torch.float32 for m in model.modules()
               if isinstance(m, torch.nn.Linear))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(model._sampling_copies) == sum(isinstance(m, torch.nn.Linear)
                                              for m in model.modules())
    reads.clear()
    sampled(model, tok)   # without --compile: no copy
    assert set(reads) == {torch.float32}


def test_the_kept_copy_follows_the_weights_at_a_fixed_address(tiny, monkeypatch):
    """--compile keeps the copy between calls (a CUDA graph reads it at one address): after an
    optimizer step it holds the new weights, in place, and samples what autocast does."""
    model, tok = bf16_tiny(tiny)
    monkeypatch.setattr(M, "SAMPLING_COPY_DEVICES", ("cpu",))
    monkeypatch.setattr(M, "compile_backend", lambda device: (None, "a static cache alone"))
    sampled(model, tok, compile=True)
    copies = model._sampling_copies
    addresses = [c.data_ptr() for c in copies]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    logits.square().mean().backward()
    opt.step()
    after = sampled(model, tok, compile=True)
    assert model._sampling_copies is copies and [c.data_ptr() for c in copies] == addresses
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.equal(c, m.weight.to(torch.bfloat16)) for c, m in zip(copies, linears))
    monkeypatch.setattr(M, "SAMPLING_COPY_DEVICES", ())
    want = sampled(model, tok, compile=True)
    assert torch.equal(after.response_ids, want.response_ids)


def test_no_copy_in_float32_or_off_the_gpu(tiny):
    model, tok = tiny   # float32: nothing to cast, nothing copied
    seen = []
    with M.sampling_weights(model):
        seen = [m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert set(seen) == {torch.float32} and getattr(model, "_sampling_copies", None) is None
    model.autocast_dtype = torch.bfloat16   # bf16, but on the CPU: off by default
    with M.sampling_weights(model):
        seen = [m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert set(seen) == {torch.float32}


# --- 7. the internals of transformers and torch that model.py leans on ----------------------

def test_the_private_names_model_py_uses_still_exist():
    """model.py uses parts of transformers 5.x and torch that are not public API; a release
    that renames one would break --compile or padding silently. Each is named here."""
    import inspect
    import transformers
    import transformers.generation.utils as gen_utils
    import transformers.integrations.sdpa_attention as sdpa
    from transformers import CompileConfig, GenerationConfig, StaticCache
    from transformers.masking_utils import AttentionMaskInterface
    from torch._dynamo.utils import counters
    import torch._dynamo
    missing = []

    def need(ok, what):
        if not ok:
            missing.append(what)
    need(hasattr(CompileConfig(), "_compile_all_devices"), "CompileConfig._compile_all_devices")
    need("_compile_all_devices" in inspect.getsource(gen_utils),
         "generate() reading CompileConfig._compile_all_devices")
    g = GenerationConfig()
    need(hasattr(g, "disable_compile") and hasattr(g, "compile_config"),
         "GenerationConfig.disable_compile / compile_config")
    need(callable(getattr(sdpa, "sdpa_attention_forward", None)), "sdpa_attention_forward")
    need(callable(getattr(sdpa, "repeat_kv", None)), "sdpa_attention.repeat_kv")
    need(M.PAD_SAFE_SDPA in transformers.AttentionInterface._global_mapping,
         "AttentionInterface registration")
    need(M.PAD_SAFE_SDPA in AttentionMaskInterface._global_mapping,
         "AttentionMaskInterface registration")
    need(all(hasattr(StaticCache, a) for a in ("reset", "get_max_length")),
         "StaticCache.reset / get_max_length")
    need("stats" in counters or isinstance(counters, dict), "torch._dynamo.utils.counters")
    need(hasattr(torch._dynamo.config, "recompile_limit")
         or hasattr(torch._dynamo.config, "cache_size_limit"), "Dynamo's recompile limit")
    need(callable(getattr(torch.compiler, "is_compiling", None)), "torch.compiler.is_compiling")
    model = grouped()
    need(M._accepts(model, "cache") or M._accepts(model, "past_key_values"),
         "the model's cache argument")
    assert not missing, ("transformers %s / torch %s lack what support/model.py uses: %s; "
                         "install the versions requirements.txt pins"
                         % (transformers.__version__, torch.__version__, ", ".join(missing)))
