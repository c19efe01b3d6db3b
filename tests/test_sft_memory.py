"""SFT's loss is memory-safe by construction (M.batch_loss): the transformer body runs once,
then only response positions go through the LM head, a bounded chunk at a time, and the
backward recomputes one chunk's logits at a time. Checked against the full-logits loss it
replaced (same value, same gradients, same 20-step model) and against measured tensor memory."""
import pytest
import torch

import sft
from support import curriculum
from support import model as M
from support import config
from support import world as W
from conftest import build_tiny
from tensor_memory import TensorPeak
from test_qwen import build_tiny_qwen

WORLD = W.TinyWorld()


def full_logits_loss(model, batch, chunk_tokens=None):
    """The loss with logits for every position of the whole batch (M.whole_batch_loss, the
    computation sft.py used before chunking, and still the tiny preset's)."""
    return M.whole_batch_loss(model, batch)


def test_the_tiny_preset_keeps_the_whole_batch_loss_bit_for_bit():
    """Every committed tiny-world SFT model was trained with whole-batch logits; chunking
    changes the rounding (weights 1e-7 apart after 20 steps), so the tiny preset keeps it and
    `python sft.py` keeps giving the same model."""
    assert config.SFT_PRESETS["tiny"]["loss_chunk_tokens"] == 0
    model, _, batch = tiny_batch()
    assert torch.equal(M.batch_loss(model, batch, 0), M.whole_batch_loss(model, batch))
    assert all(config.SFT_PRESETS[p]["loss_chunk_tokens"] == M.LOSS_CHUNK_TOKENS
               for p in ("qwen", "smol"))


def tiny_batch(n=24, seed=0, skills=("solve", "summarize", "reflect")):
    model, tok = build_tiny()
    exs = curriculum.tiny_seed_data(WORLD, n, seed, list(skills))
    batch = sft.collate(sft.encode_examples(tok, exs, 200), tok.pad_token_id, "cpu")
    return model, tok, batch


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(chunk):
    model, _, batch = tiny_batch()
    assert any(batch[3]), "the batch should hold a soft target (solve_rl)"
    want = full_logits_loss(model, batch)
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = M.batch_loss(model, batch, chunk_tokens=chunk)
    got.backward()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip((p.grad for p in model.parameters()), want_grads):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)
    with torch.no_grad():   # the held-out path (no checkpoint) too
        assert torch.allclose(M.batch_loss(model, batch, chunk_tokens=chunk), want, rtol=1e-5)


def test_twenty_sft_steps_give_the_same_model():
    """train_sft with the chunked loss against the same loop with the full-logits loss."""
    _, tok = build_tiny()
    enc = sft.encode_examples(tok, curriculum.tiny_seed_data(WORLD, 200, 0, list(curriculum.SKILLS)), 200)
    models = []
    for loss_fn in (full_logits_loss, M.batch_loss):
        model, _ = build_tiny()
        real = M.batch_loss
        M.batch_loss = loss_fn
        try:
            sft.train_sft(model, tok, enc, enc[:16], steps=20, batch_size=16, lr=3e-3, warmup=3,
                          device="cpu", seed=0, log_every=20)
        finally:
            M.batch_loss = real
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_qwen_loss_equals_the_full_logits_loss(tmp_path):
    from support.model import load_model
    model, tok = load_model(build_tiny_qwen(tmp_path / "q"), device="cpu")
    exs = [{"prompt": f"What is {i} + {i}?", "response": f"It is {2 * i}. #### {2 * i}"}
           for i in range(6)]
    batch = sft.collate(sft.encode_examples(tok, exs, 64), tok.pad_token_id, "cpu")
    assert torch.allclose(M.batch_loss(model, batch, chunk_tokens=5),
                          full_logits_loss(model, batch), rtol=1e-5)


def _loss_peak(model, batch, loss_fn):
    with TensorPeak() as m:
        loss_fn(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return m.peak


def test_only_one_chunk_of_logits_is_alive_in_forward_and_backward():
    """Measured: the loss's forward + backward holds at most a few chunks of logits above what
    the body alone needs, while the full-logits loss holds the whole batch's. A big vocabulary
    (hidden 32, vocab 4,000) makes the logits the dominant term, as for a real model."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    vocab, chunk = 4000, 32
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2))
    ids = torch.randint(0, vocab, (8, 64))
    labels = ids.clone()
    labels[:, :16] = -100                       # a prompt of 16 tokens: no loss there
    batch = (ids, torch.ones_like(ids), labels, [None] * 8)
    n_resp = 8 * 48
    logits_fp32 = n_resp * vocab * 4            # one float32 copy of all response logits
    body = _loss_peak(model, batch, lambda m, b: m.model(input_ids=b[0]).last_hidden_state.sum())
    chunked = _loss_peak(model, batch, lambda m, b: M.batch_loss(m, b, chunk_tokens=chunk))
    full = _loss_peak(model, batch, full_logits_loss)
    assert full - body > 2 * logits_fp32                           # the old way: all of them
    assert chunked - body < 4 * chunk * vocab * 4 + logits_fp32 / 10   # the new: one chunk
