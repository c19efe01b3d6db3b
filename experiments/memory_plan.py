"""Peak GPU memory of each phase of `sft.py` and `train.py`, from the model's config alone.

    python experiments/memory_plan.py --model Qwen/Qwen2.5-0.5B-Instruct --gpu-gb 24
    python experiments/memory_plan.py --model Qwen/Qwen2.5-1.5B-Instruct --gpu-gb 24 --lora-rank 16
    python experiments/memory_plan.py --model Qwen/Qwen2.5-1.5B-Instruct --gpu-gb 80 --nproc 8
    python experiments/memory_plan.py --table     # RUNNING.md's table of models x cards

No weights are loaded and nothing is downloaded: the model is built on PyTorch's `meta` device
from its config (the Qwen2.5 configs are written out below; any other model: a local directory
with a config.json, or a config object from Python) to count its parameters, and the rest is
arithmetic on the settings of a preset (`--preset qwen`: support/config.py's SFT_PRESETS and PRESETS). For
each phase it lists what is alive at the phase's peak:

- weights: the trained model's float32 master weights (AdamW needs them, see model.py), or
  with LoRA the frozen base in bf16 plus float32 adapters;
- gradients and AdamW's two moments (float32, 4 + 8 bytes per trained weight); train.update
  frees the gradients right after the optimizer step, so RL sampling and the summaries run
  without them (SFT steps follow each other, and count them throughout);
- the KL reference: Linear weights in bf16, the rest (embeddings, norms, a tied output layer)
  in float32, as model.load_model stores it (none with LoRA: the base with adapters off);
- activations of the transformer body: per token and layer, bytes = a_H x hidden + a_I x
  intermediate, with or without gradient checkpointing (then: each layer's input and the
  rotary tables, b_H x hidden, plus one layer recomputed in the backward);
- logits: SFT computes them for at most LOSS_CHUNK_TOKENS (support/model.py) response tokens
  at a time; the RL update (model.token_logprobs) for every response position of a
  --logprob-tokens micro-batch, its peak the larger of the backward's start and its end;
- under bf16 autocast, the bf16 copies of float32 weights that a backward keeps: the output
  layer's with gradient checkpointing, every Linear's without (sampling keeps none: it runs
  with autocast's weight cache off);
- sampling: the larger of the prefill (one layer's temporaries and the prompt's cache) and the
  whole KV cache (bf16 under autocast) of sample-micro-batch rows x (prompt + max-new-tokens)
  with one layer's copy while it grows, plus the sampler's logits and probabilities; the SFT
  bootstrap's largest call is its summaries and reflections, 2 x (rows / samples) long prompts;
- train.py --compile keeps, through every RL phase: the static KV cache of sample-micro-batch
  rows x the power of two at or above the longest prompt + max-new-tokens
  (model.static_cache_length), under bf16 the bf16 copy of the Linear weights that its
  rollouts decode from (model.sampling_weights), and the CUDA graphs' private memory
  pool, which holds a decoding step's intermediates outside the tensors counted here; the
  plan allows one decoding step's sampler buffers for it again (an allowance, not a
  measurement: no card has run it; the smoke script compares reserved memory with the plan);
- 0.25 GiB of CUDA workspaces (cuBLAS), which PyTorch's allocator counts as allocated.

The per-element constants (a_H, a_I, b_H, bytes per logit) were measured on the CPU with
tests/tensor_memory.py, which counts every live tensor (float32, and bf16 autocast over
float32 or bf16 weights); tests/test_memory_plan.py checks the whole plan against measured
peaks of each phase on tiny models. On a GPU the kernels differ (cuBLAS needs workspace,
attention runs other kernels), so `experiments/gpu_smoke.sh` prints the measured peak next to
this plan and fails when a phase goes above it. A phase fits a card of N GB when plan x 1.1 +
1 GiB <= N x 10^9 bytes: the 10% is the caching allocator's fragmentation (the KV cache grows
a little at every decoding step; support/__init__.py sets
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless you set it, which keeps it small), the
1 GiB the CUDA context (about 0.5 GiB) and libraries; neither is in the tensors' count. Every
number of the plan is GiB (2^30 bytes).

`plan(config, settings)` is the importable part; `settings_for(preset, ...)` builds the
settings of a preset, `settings_from(sft_config, rl_config)` those of two runs (the smoke
checker's). The prompt lengths are the longest each phase builds (see settings_from).

Several GPUs (`torchrun`, ranks.py): every rank holds a full replica (weights, gradients,
AdamW moments, reference) and the gradients are all-reduced in place, nothing is sharded, and
the micro-batch flags bound each rank's activations as they bound one GPU's: the memory per
rank is this plan, unchanged (`--nproc N` says so and adds the total over the N GPUs), plus
what NCCL reserves outside PyTorch (on NVSwitch nodes about 1 GiB per GPU for NVLink SHARP,
off with NCCL_NVLS_ENABLE=0).
"""
import argparse
import os
import sys
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB = 2 ** 30

# The Qwen2.5 configs (from their config.json on the hub), so the plan needs no download. The
# published sizes, 0.49B and 1.54B parameters, add up only with tied embeddings for both.
_QWEN25 = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=32768,
               rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu",
               tie_word_embeddings=True)
KNOWN_CONFIGS = {
    "Qwen/Qwen2.5-0.5B-Instruct": dict(_QWEN25, hidden_size=896, intermediate_size=4864,
                                       num_hidden_layers=24, num_attention_heads=14,
                                       num_key_value_heads=2),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(_QWEN25, hidden_size=1536, intermediate_size=8960,
                                       num_hidden_layers=28, num_attention_heads=12,
                                       num_key_value_heads=2),
}
KNOWN_CONFIGS["Qwen/Qwen2.5-3B-Instruct"] = dict(_QWEN25, hidden_size=2048,
                                                 intermediate_size=11008, num_hidden_layers=36,
                                                 num_attention_heads=16, num_key_value_heads=2)
# SmolLM2-135M-Instruct, as the GGUF file of the smol preset describes it
KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"] = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True)
for _size in ("0.5B", "1.5B", "3B"):
    KNOWN_CONFIGS[f"Qwen/Qwen2.5-{_size}"] = KNOWN_CONFIGS[f"Qwen/Qwen2.5-{_size}-Instruct"]

# Measured constants (see the docstring). Activations kept for the backward, bytes per token
# and layer = a_H x hidden + a_I x intermediate, by precision (bf16: autocast over float32
# weights; bf16-weights: autocast over a bf16 base, i.e. LoRA); with gradient checkpointing,
# what each layer keeps is its input and the rotary tables, b_H x hidden; the backward then
# recomputes one layer at a time (RECOMPUTE x that layer's activations, with its gradients).
ACT_KEPT = {"fp32": (40, 16), "bf16": (34, 8), "bf16-weights": (24, 8)}
BOUNDARY = {"fp32": 7.75, "bf16": 5.9, "bf16-weights": 4.2}
RECOMPUTE = 1.3
# The prefill of a generate call (no grad): bytes per prompt token = p_H x hidden + p_I x
# intermediate at its peak (one layer's temporaries, attention's in float32 after the rotary
# embedding among them). Measured with 8-16 rows of 256-1024-token prompts and intermediate
# sizes 128-512.
PREFILL = {"fp32": (13.7, 12.2), "bf16": (15.6, 6.0), "bf16-weights": (6.7, 8.1)}
# A decoding step's sampler: the step's logits and generate's float32 copies and probabilities,
# bytes per row and vocabulary entry (measured with 8 rows, 80-320 new tokens).
SAMPLER_BYTES = {"fp32": 72, "bf16": 36, "bf16-weights": 44}
# Bytes per logit element at the peak: SFT's chunk in its backward, and the same without grad.
LOGIT_BYTES = {"sft": {"fp32": 15, "bf16": 13}, "sft_nograd": {"fp32": 10.5, "bf16": 9.5}}
# The RL update's micro-batch (model.token_logprobs), in bytes per logit element of one row
# (response positions x vocabulary): its peak is the larger of the start of the backward (every
# row's logits kept from the forward, "kept" per row, plus one row's backward, "one row") and
# its end (every row's gradient, "grads" per row, when unbind's backward stacks them).
# Measured at 1, 2, 3, 4, 6 and 8 rows of 513 positions at Qwen2.5's vocabulary (151,936).
UPDATE_LOGIT_BYTES = {"fp32": {"kept": 4.0, "one row": 12.2, "grads": 8.0, "grads fixed": 0.3},
                      "bf16": {"kept": 4.0, "one row": 12.1, "grads": 6.0, "grads fixed": 4.2}}


@dataclass
class Settings:
    """What decides the memory of each phase (defaults: none; see settings_for)."""
    precision: str = "bf16"            # bf16 autocast over float32 weights, or fp32
    lora_rank: int = 0
    grad_checkpointing: bool = True
    reference: bool = True             # beta > 0: a KL reference exists
    sft_batch_size: int = 8
    sft_max_len: int = 1024
    loss_chunk_tokens: int = 1024
    heldout_rows: int = 32
    bootstrap_rows: int = 128          # sft.py's --sample-micro-batch
    bootstrap_samples: int = 4         # sft.py's --bootstrap-samples
    bootstrap_prompt_tokens: int = 2400   # a summary prompt: the question + 4 answers of 512
    bootstrap_new_tokens: int = 512
    sample_rows: int = 128             # train.py's --sample-micro-batch
    prompt_tokens: int = 1536          # longest RL prompt: lessons + an earlier attempt
    min_prompt_tokens: int = 128       # shortest: a plain GSM8K prompt in the chat template
    max_new_tokens: int = 512
    logprob_tokens: int = 4096
    summary_rows: int = 16             # train.py's --problems-per-step
    summary_prompt_tokens: int = 2400
    summary_tokens: int = 192
    compile: bool = False              # train.py --compile (see the module docstring)
    # cuBLAS keeps workspaces in PyTorch's caching allocator (so in max_memory_allocated), a few
    # to 32 MiB per stream and handle; 0 on the CPU.
    cuda_workspace: int = 256 * 2 ** 20


def settings_from(sft_cfg: dict, rl_cfg: dict, **overrides) -> Settings:
    """The settings of an sft.py and a train.py configuration (a preset's dicts, or the
    sft_config.json / config.json of two runs), with overrides (None: not given). Prompt
    lengths are the longest each phase builds: an RL prompt with an earlier attempt
    (max-new-tokens) and the lessons of up to 4 problems (about as long again, plus the
    question), a summary prompt with 4 answers of max-new-tokens each."""
    s, r = sft_cfg, rl_cfg
    precision = r.get("precision_used") or r["precision"]
    base = Settings(
        precision="bf16" if precision == "auto" else precision,
        lora_rank=r.get("lora_rank") or 0, reference=r.get("beta", 0.04) > 0,
        grad_checkpointing=bool(r["grad_checkpointing"]), sft_batch_size=s["batch_size"],
        sft_max_len=s["max_len"], loss_chunk_tokens=s.get("loss_chunk_tokens", 1024),
        heldout_rows=4 * s["batch_size"], bootstrap_rows=s["sample_micro_batch"],
        bootstrap_samples=s.get("bootstrap_samples", 4),
        bootstrap_new_tokens=s["max_new_tokens"],
        bootstrap_prompt_tokens=4 * s["max_new_tokens"] + 352,
        sample_rows=r["sample_micro_batch"], max_new_tokens=r["max_new_tokens"],
        prompt_tokens=2 * r["max_new_tokens"] + 512, logprob_tokens=r["logprob_tokens"],
        summary_rows=r["problems_per_step"], summary_tokens=r["summary_tokens"],
        summary_prompt_tokens=4 * r["max_new_tokens"] + 352, compile=bool(r.get("compile")))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def settings_for(preset: str = "qwen", **overrides) -> Settings:
    """The settings of a preset of sft.py and train.py (their PRESETS), with overrides."""
    from support import config
    import sft
    sft_cfg = dict(config.SFT_PRESETS[preset])
    assert sft.HELDOUT_ROWS_PER_BATCH == 4   # settings_from's held-out rows
    return settings_from(sft_cfg, config.PRESETS[preset], **overrides)


def load_config(model):
    """A transformers config from a hub id of KNOWN_CONFIGS, a local directory, a dict or a
    config object. Never downloads."""
    from transformers import AutoConfig, PretrainedConfig
    if isinstance(model, PretrainedConfig):
        return model
    if isinstance(model, dict):
        kw = dict(model)
        return AutoConfig.for_model(kw.pop("model_type"), **kw)
    if model in KNOWN_CONFIGS:
        return load_config(KNOWN_CONFIGS[model])
    if os.path.isdir(os.path.expanduser(model)):
        return AutoConfig.from_pretrained(os.path.expanduser(model), local_files_only=True)
    raise SystemExit(f"memory_plan: unknown model {model!r}: pass a local model directory or "
                     f"one of {', '.join(KNOWN_CONFIGS)}")


def count_params(config, lora_rank: int = 0) -> tuple[int, int]:
    """(parameters of the model, parameters of its LoRA adapters), counted on a model built on
    the meta device (shapes, no storage). Tied weights count once."""
    import torch
    from transformers import AutoModelForCausalLM
    from support import lora
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())   # parameters() yields a tied one once
    n_lora = sum(lora_rank * (m.in_features + m.out_features)
                 for name, m in model.named_modules()
                 if name.rsplit(".", 1)[-1] in lora.TARGETS) if lora_rank else 0
    return n, n_lora


def linear_params(config) -> int:
    """Parameters of the model's Linear layers (the output layer included, once if tied)."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in {id(m.weight): m.weight for m in model.modules()
                                   if isinstance(m, torch.nn.Linear)}.values())


def reference_bytes(config) -> int:
    """Bytes of the frozen KL reference under bf16 autocast, as model.load_model(frozen=True)
    stores it: each Linear weight in bf16 (autocast rounds it to bf16 anyway), everything else
    (embeddings, norms, and an output layer tied to the embeddings) in float32, so that it
    computes exactly what the policy computes."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    not_linear = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear)
                  for p in m.parameters(recurse=False)}
    size = {}   # by parameter, so that a tied weight counts once
    for m in model.modules():
        for p in m.parameters(recurse=False):
            bf16 = isinstance(m, torch.nn.Linear) and id(p) not in not_linear
            size.setdefault(id(p), (2 if bf16 else 4) * p.numel())
    return sum(size.values())


def _dims(config):
    H, L = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or H // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return H, config.intermediate_size, L, kv * head_dim, config.vocab_size


def plan(config, settings: Settings) -> dict:
    """{phase: {"parts": {name: bytes}, "total": bytes}} for the phases of sft.py and
    train.py, and "params": (model, adapters). config: anything load_config takes."""
    config = load_config(config)
    s = settings
    H, I, n_layers, kv_dim, V = _dims(config)
    P, P_lora = count_params(config, s.lora_rank)
    bf16 = s.precision == "bf16"
    act = 2 if bf16 else 4                        # bytes of an activation under autocast
    kind = ("bf16-weights" if s.lora_rank else "bf16") if bf16 else "fp32"
    a_H, a_I = ACT_KEPT[kind]
    b_H = BOUNDARY[kind]
    resid = 2 if kind == "bf16-weights" else 4     # the residual stream between layers

    # the trained weights and their optimizer
    if s.lora_rank:
        weights = {"base weights (frozen, %s)" % ("bf16" if bf16 else "fp32"): P * act,
                   "adapters (fp32)": 4 * P_lora}
        trained = P_lora
    else:
        weights = {"weights (fp32 master)": 4 * P}
        trained = P
    grads = {"gradients (fp32)": 4 * trained}
    adam = {"AdamW moments (2 x fp32)": 8 * trained}
    reference = ({"reference (bf16 Linear weights, rest fp32)": reference_bytes(config)}
                 if bf16 else {"reference (fp32)": 4 * P}) \
        if s.reference and not s.lora_rank else {}

    def body_train(rows, seq):
        """(kept, transient) bytes of the body's forward + backward on rows x seq tokens:
        what stays from the forward to the backward, and the largest extra in the backward."""
        tokens = rows * seq
        layer = tokens * (a_H * H + a_I * I)
        if s.grad_checkpointing:
            return tokens * n_layers * b_H * H, RECOMPUTE * layer
        return n_layers * layer, layer

    def body_nograd(rows, seq):
        """The largest temporaries of a forward without grad (a held-out, reference or
        prefill pass): one layer's MLP (three intermediate tensors) on top of the residual
        stream. Attention keeps no score matrix (measured on the CPU; on a GPU the flash and
        memory-efficient kernels keep O(length) per row)."""
        tokens = rows * seq
        return tokens * (2 * H * resid + 3 * I * act)

    def kv(rows, length, copies=0):
        return rows * length * (n_layers + copies) * 2 * kv_dim * act

    def sampling(rows, prompt, new, static=False):
        """The larger of the prefill (one layer's temporaries, and the prompt's cache) and the
        last decoding step (the whole cache, plus one layer's copy while it grows: each step
        concatenates), with the sampler's float32 logits. static (--compile's rollouts): the
        cache is preallocated and counted with what --compile keeps; the prefill's
        temporaries remain."""
        p_H, p_I = PREFILL[kind]
        temporaries = rows * prompt * (p_H * H + p_I * I)
        if static:
            main = {"prefill of %d x %d tokens" % (rows, prompt): temporaries}
        else:
            main = {"max(prefill of %d x %d tokens, KV cache of %d tokens)" % (
                rows, prompt, prompt + new): max(temporaries + kv(rows, prompt),
                                                  kv(rows, prompt + new, 1))}
        return {**main, "sampler (logits, probabilities)": rows * V * SAMPLER_BYTES[kind]}

    def phase(*parts):
        merged = {}
        for p in parts:
            merged.update(p)
        if s.cuda_workspace:
            merged["CUDA workspaces"] = s.cuda_workspace
        return {"parts": merged, "total": sum(merged.values())}

    # --compile keeps its static cache, under bf16 the bf16 copy of the float32 Linear weights
    # its rollouts decode from (a LoRA base is bf16 already), and a graph pool
    compiled = {}
    if s.compile:
        from support.model import static_cache_length
        length = static_cache_length(s.prompt_tokens + s.max_new_tokens)
        compiled = {"--compile: static KV cache of %d x %d tokens" % (s.sample_rows, length):
                        kv(s.sample_rows, length),
                    **({"--compile: bf16 copy of the Linear weights": 2 * linear_params(config)}
                       if bf16 and not s.lora_rank else {}),
                    "--compile: CUDA graph pool (allowance)":
                        s.sample_rows * V * SAMPLER_BYTES[kind]}
    # Under bf16 autocast a float32 weight is cast for each matmul, and the backward keeps the
    # bf16 copy: with checkpointing the output layer's (the body's layers are recomputed one at
    # a time), without it every Linear's. (A LoRA base is bf16 already: no copies.)
    head_copy = {}
    if bf16 and not s.lora_rank:
        n = V * H if s.grad_checkpointing else linear_params(config)
        head_copy = {"bf16 copies of %s for the backward" % (
            "the output layer" if s.grad_checkpointing else "every Linear"): 2 * n}
    ckpt = " with checkpointing" if s.grad_checkpointing else ""
    sft_tokens = s.sft_batch_size * s.sft_max_len
    chunk = min(s.loss_chunk_tokens or sft_tokens, sft_tokens)   # 0: the whole batch at once
    step_temps = 4 * trained   # AdamW's foreach step: one float32 temporary per trained weight
    kept, transient = body_train(s.sft_batch_size, s.sft_max_len)
    # The loss's backward (one chunk's logits at a time) comes first, then the body's.
    sft_logits = chunk * V * LOGIT_BYTES["sft"][s.precision] + sft_tokens * H * 4
    out = {"params": (P, P_lora)}
    # The bootstrap samples the answers of rows // samples problems in one call of `rows` short
    # prompts, then their summaries and reflections in one call of 2 x (rows // samples) long
    # ones: the larger of the two.
    problems = max(1, s.bootstrap_rows // s.bootstrap_samples)
    answers = sampling(s.bootstrap_rows, s.min_prompt_tokens, s.bootstrap_new_tokens)
    summaries = sampling(2 * problems, s.bootstrap_prompt_tokens, s.bootstrap_new_tokens)
    out["SFT bootstrap sampling"] = phase(weights, max(
        answers, summaries, key=lambda parts: sum(parts.values())))
    out["SFT step"] = phase(weights, grads, adam, head_copy, {
        "activations kept%s (%d x %d tokens)" % (ckpt, s.sft_batch_size, s.sft_max_len): kept,
        "max(logits chunk of %d tokens, a layer's backward, AdamW step)" % chunk:
            max(sft_logits, transient, step_temps - kept)})
    heldout_tokens = s.heldout_rows * s.sft_max_len
    out["SFT held-out pass"] = phase(weights, grads, adam, {
        "forward (%d rows x %d tokens), no grad" % (s.heldout_rows, s.sft_max_len):
            body_nograd(s.heldout_rows, s.sft_max_len),
        "logits chunk (no grad)": chunk * V * LOGIT_BYTES["sft_nograd"][s.precision]
            + heldout_tokens * H * 4})
    rl_state = (weights, grads, adam, reference, compiled)
    # train.update frees the gradients right after the optimizer step, so sampling and the
    # summaries run without them
    rl_idle = (weights, adam, reference, compiled)
    out["RL sampling"] = phase(*rl_idle, sampling(s.sample_rows, s.prompt_tokens,
                                                   s.max_new_tokens, static=s.compile))
    # A log-prob micro-batch holds at most logprob_tokens padded tokens; its logits cover the
    # response positions: most when prompts are shortest.
    rows = max(1, s.logprob_tokens // (s.min_prompt_tokens + s.max_new_tokens))
    positions = rows * (s.max_new_tokens + 1)
    seq = s.logprob_tokens // rows
    kept, transient = body_train(rows, seq)
    u = UPDATE_LOGIT_BYTES[s.precision]
    row_logits = (s.max_new_tokens + 1) * V
    logits = row_logits * max(u["one row"] + u["kept"] * rows,
                              u["grads fixed"] + u["grads"] * rows)
    out["RL log-prob + update micro-batch"] = phase(*rl_state, head_copy, {
        "activations kept%s (%d tokens)" % (ckpt, s.logprob_tokens): kept,
        "max(logits of %d response positions, a layer's backward)" % positions:
            max(logits, transient)})
    out["RL summaries"] = phase(*rl_idle, sampling(s.summary_rows, s.summary_prompt_tokens,
                                                    s.summary_tokens))
    return out


HINTS = {
    "SFT bootstrap sampling": "sft.py --sample-micro-batch",
    "SFT step": "sft.py --batch-size or --max-len (or --grad-checkpointing, --lora-rank)",
    "SFT held-out pass": "sft.py --batch-size (the held-out pass scores 4 x batch-size rows)",
    "RL sampling": "train.py --sample-micro-batch",
    "RL log-prob + update micro-batch": "train.py --logprob-tokens (or --grad-checkpointing)",
    "RL summaries": "train.py --problems-per-step or --summary-tokens",
}


# What stays allocated whatever the batch (the names of plan()'s parts, before " (").
FIXED = ("weights", "base weights", "adapters", "gradients", "AdamW moments", "reference")


def fits(total_bytes: float, gpu_gb: float) -> bool:
    """plan x 1.1 + 1 GiB (CUDA context, fragmentation) within a card of gpu_gb GB, counted
    as 10^9 bytes: a "24 GB" card may offer as little as 22.5 GiB (an L4, an A10)."""
    return total_bytes * 1.1 + GIB <= gpu_gb * 1e9


def report(name: str, p: dict, gpu_gb: float, settings: Settings, without_compile=None) -> str:
    """The plan as a table, a verdict per phase and a way out; without_compile: the plan of the
    same settings without --compile, to say when --compile is what no longer fits."""
    P, P_lora = p["params"]
    lines = [f"memory plan: {name}, {P / 1e9:.2f}B parameters"
             + (f", LoRA rank {settings.lora_rank} ({P_lora / 1e6:.1f}M adapter weights)"
                if settings.lora_rank else "")
             + f", {settings.precision}, gradient checkpointing "
             + ("on" if settings.grad_checkpointing else "off")
             + (", --compile" if settings.compile else "") + f"; card: {gpu_gb:g} GB",
             "", f"{'phase':<34} {'peak GiB':>8}  fits  what is alive at the peak (GiB)",
             "-" * 100]
    for phase, v in p.items():
        if phase == "params":
            continue
        ok = fits(v["total"], gpu_gb)
        parts = ", ".join(f"{k} {b / GIB:.2f}" for k, b in v["parts"].items())
        lines.append(f"{phase:<34} {v['total'] / GIB:8.2f}  {'yes ' if ok else 'NO  '}  {parts}")
        fixed = sum(b for k, b in v["parts"].items() if k.split(" (")[0] in FIXED)
        if not ok and not fits(fixed, gpu_gb):
            lines.append(f"{'':<46}-> does not fit: the weights, gradients, AdamW moments and "
                         f"reference alone take {fixed / GIB:.2f} GiB: pass --lora-rank "
                         "(sft.py and train.py)")
        elif not ok and without_compile and fits(without_compile[phase]["total"], gpu_gb):
            lines.append(f"{'':<46}-> does not fit with --compile (what it keeps); fits "
                         "without it")
        elif not ok:
            lines.append(f"{'':<46}-> does not fit: lower {HINTS[phase]}")
    worst = max(v["total"] for k, v in p.items() if k != "params")
    verdict = "fits" if fits(worst, gpu_gb) else "does NOT fit"
    lines.append(f"\n{name} {verdict} on {gpu_gb:g} GB (largest phase {worst / GIB:.2f} GiB; "
                 "a phase fits when plan x 1.1 + 1 GiB <= the card's GB x 10^9 bytes)")
    return "\n".join(lines)


TABLE_MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct")
TABLE_CARDS = (16, 24, 40, 80)
TABLE_LORA_RANK = 16


def vram_table(preset="qwen") -> str:
    """A markdown table: each model x full fine-tuning / LoRA (rank 16), the plan's largest
    phase at the preset's settings, and on which cards it fits (fits: plan x 1.1 + 1 GiB)."""
    lines = ["| model | fine-tuning | largest phase (GiB) | "
             + " | ".join(f"{c} GB" for c in TABLE_CARDS) + " |",
             "|---|---|---:|" + "---|" * len(TABLE_CARDS)]
    for model in TABLE_MODELS:
        for rank in (0, TABLE_LORA_RANK):
            p = plan(model, settings_for(preset, lora_rank=rank))
            worst = max(v["total"] for k, v in p.items() if k != "params")
            cells = ["fits" if fits(worst, c) else "no" for c in TABLE_CARDS]
            lines.append(f"| {model.split('/')[1]} | {'LoRA r%d' % rank if rank else 'full'} | "
                         f"{worst / GIB:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct",
                    help=f"one of {', '.join(KNOWN_CONFIGS)}, or a local model directory")
    ap.add_argument("--gpu-gb", type=float, help="memory of the card (GB)")
    ap.add_argument("--table", action="store_true",
                    help="print RUNNING.md's table: 4 models x full / LoRA x 4 cards")
    ap.add_argument("--preset", default="qwen", help="the preset whose settings are planned")
    ap.add_argument("--lora-rank", type=int, default=None)
    ap.add_argument("--logprob-tokens", type=int, default=None)
    ap.add_argument("--sample-micro-batch", type=int, default=None, dest="sample_rows")
    ap.add_argument("--sft-batch-size", type=int, default=None)
    ap.add_argument("--sft-max-len", type=int, default=None)
    ap.add_argument("--nproc", type=int, default=1,
                    help="processes of torchrun (train.py): the memory per rank and in all")
    ap.add_argument("--no-grad-checkpointing", action="store_false", default=None,
                    dest="grad_checkpointing")
    ap.add_argument("--compile", action="store_true", default=None,
                    help="train.py --compile: its static cache, weight copy and graph pool")
    args = ap.parse_args(argv)
    if args.table:
        print(vram_table(args.preset))
        return None
    if args.gpu_gb is None:
        ap.error("--gpu-gb is required (or --table)")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("model", "gpu_gb", "preset", "nproc", "table")}
    settings = settings_for(args.preset, **overrides)
    p = plan(args.model, settings)
    plain = plan(args.model, replace(settings, compile=False)) if settings.compile else None
    print(report(args.model, p, args.gpu_gb, settings, plain))
    if args.nproc > 1:
        rl = max(v["total"] for k, v in p.items() if k.startswith("RL"))
        print(f"torchrun --nproc_per_node {args.nproc} train.py: each rank holds a full replica "
              "(gradients all-reduced, nothing sharded), so the memory per rank is the plan "
              f"above: RL peak {rl / GIB:.2f} GiB per rank, {args.nproc * rl / GIB:.2f} GiB over "
              f"the {args.nproc} GPUs. Outside PyTorch's count, NCCL reserves buffers per "
              "communicator; on NVSwitch nodes (NVLink SHARP) about 1 GiB per GPU, which "
              "NCCL_NVLS_ENABLE=0 turns off: leave that much free beyond the plan")
    return p


if __name__ == "__main__":
    main()
