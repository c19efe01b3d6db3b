"""LoRA adapters, written by hand: fine-tune a model that does not fit in memory with AdamW.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685)
freezes a pretrained weight W [out, in] and learns a low-rank change of it:

    h = W x + (alpha / r) * B A x,     A [r, in], B [out, r], r << min(in, out)

A is initialized at random and B at zero (Hu et al., section 4.1), so B A = 0 and the adapted
model starts as exactly the base model. Only A and B are trained: the gradients and the two
AdamW moments exist for them alone, and the frozen base can stay in bf16 on a GPU. For LANPO
this gives three things at once (`--lora-rank R` in sft.py and train.py):
- memory: Qwen2.5-1.5B's full fine-tune needs 16 bytes per weight (fp32 weights, gradients,
  two AdamW moments: 25 GB before any activation); with adapters of rank 16 it needs the bf16
  base (3 GB) plus 16 bytes per adapter weight (18M of them: 0.3 GB);
- the KL reference for free: the reference of train.py is the model before RL, which is the
  base with its adapters switched off (`BaseModel`), so no second copy of the weights exists;
- a plain model at the end: `save_merged` writes W + (alpha / r) B A as ordinary weights that
  transformers' from_pretrained loads without knowing about LoRA.

Adapters go on every attention and MLP projection (q, k, v, o, gate, up, down: TARGETS), as
in QLoRA (Dettmers et al. 2023), which found adapting all of them necessary to match full
fine-tuning; Hu et al. adapted q and v only. The LM head and the embeddings stay frozen.

Why not peft: this project is a readable implementation written by hand, and what LANPO needs
from LoRA is the fifty lines below (one module, switch on/off, merge); with peft the reference
model, the checkpoint format and the saved model would each go through a library's wrapper
classes that a reader would have to look up.
"""
import math
import os
from contextlib import contextmanager
from functools import wraps

import torch
import torch.nn as nn
import torch.nn.functional as F

from support import model as M

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Linear):
    """An nn.Linear whose frozen weight W gets the trainable low-rank change (alpha / r) B A.
    It *is* the base Linear (same weight and bias objects, same state-dict names), plus
    `lora_A` and `lora_B`; the adapter parameters are float32 whatever the base's dtype, so
    AdamW's small steps are not rounded away."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator=None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias   # shared, not copied
        dev = base.weight.device
        # A as nn.Linear initializes its weight (Kaiming-uniform); Hu et al. draw it Gaussian.
        # Either way only B = 0 matters for the start: B A = 0. Drawn on the CPU from the
        # caller's generator, so --seed decides A and the global random stream is untouched.
        a = torch.empty(rank, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(dev))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev))
        self.scaling = alpha / rank
        self.adapter_on = True

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if not self.adapter_on:
            return y
        # Under autocast the matmuls run in bf16 whatever the dtypes; without it, a bf16 input
        # meets float32 adapters and is cast (a copy, so not done when autocast decides).
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lora_A.dtype)
        delta = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return y + delta.to(y.dtype)

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A in float32: a bf16 base plus a small change, rounded back to
        bf16, would lose the change (the reason the policy keeps float32 weights)."""
        return self.weight.float() + self.scaling * (self.lora_B @ self.lora_A)


def adapters(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def is_lora(model) -> bool:
    return bool(adapters(model))


def add_lora(model, rank: int, alpha: float, seed: int = 0):
    """Replace every TARGETS projection of `model` by a LoRALinear, in place; freeze all other
    weights. Under bf16 autocast (a GPU run) the frozen base's weights go to bf16 (half the
    memory; the forward is bf16 anyway) and the adapters stay float32. `seed` draws the A
    matrices. Returns the model."""
    if rank < 1 or alpha <= 0:
        raise ValueError("LoRA needs rank >= 1 and alpha > 0")
    model.requires_grad_(False)
    if getattr(model, "autocast_dtype", None) is not None:
        # weights only: buffers stay float32 (rotary inv_freq in bf16 puts a token at position
        # 2,000 up to 1.9 rad away from where the merged model, in float32, puts it)
        for p in model.parameters():
            p.data = p.data.to(model.autocast_dtype)
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children()
               if name in TARGETS and type(child) is nn.Linear]
    if not targets:
        raise ValueError(f"{type(model).__name__} has none of the LoRA targets {TARGETS}")
    generator = torch.Generator().manual_seed(seed)
    for parent, name, child in targets:
        setattr(parent, name, LoRALinear(child, rank, alpha, generator))
    model.lora = {"rank": rank, "alpha": alpha}
    return model


def trainable(model) -> list:
    """The parameters an optimizer gets: all of them, or with LoRA the adapters only."""
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def adapters_off(model):
    """The base model: every adapter switched off for the duration."""
    mods = adapters(model)
    for m in mods:
        m.adapter_on = False
    try:
        yield model
    finally:
        for m in mods:
            m.adapter_on = True


class BaseModel:
    """The base of a LoRA model, usable wherever train.py uses its frozen reference model:
    called like the model, it runs the very same weights with the adapters off. No second copy
    of the weights exists; the reference is the model before any adapter training (B = 0), as
    the frozen SFT model is without LoRA."""

    def __init__(self, model):
        self.model = model
        self.autocast_dtype = getattr(model, "autocast_dtype", None)

        @wraps(model.forward)   # the same signature (model.py asks for logits_to_keep)
        def forward(*args, **kwargs):
            with adapters_off(model):
                return model(*args, **kwargs)
        self.forward = forward

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def parameters(self):
        return self.model.parameters()


def merged_state_dict(model) -> dict:
    """The state dict of the merged model: names as in the base model, each adapted weight
    replaced by W + (alpha / r) B A, no adapter entries. Every tensor float32 and on the CPU
    (a float32 copy of a bf16 base on the GPU would need twice the base's memory there, at the
    end of a run that the memory plan sized without it)."""
    with torch.no_grad():
        merged = {f"{name}.weight": mod.merged_weight().cpu()
                  for name, mod in model.named_modules() if isinstance(mod, LoRALinear)}
        return {k: merged[k] if k in merged else v.float().cpu()
                for k, v in model.state_dict().items()
                if not k.endswith((".lora_A", ".lora_B"))}


def save_merged(model, tok, out_dir: str):
    """A plain model directory (atomically), loadable by from_pretrained: the adapters merged
    into the weights, written like any saved model (model.save_model: in the dtype of the
    checkpoint the run started from, bf16 for Qwen2.5). The model itself keeps its adapters
    (nothing is merged in place)."""
    M.save_model(model, tok, out_dir, state_dict=merged_state_dict(model))


def load_adapters(model, directory: str):
    """Put the A and B matrices of a checkpoint into a model that add_lora prepared the same
    way. A checkpoint of a LoRA run is the model's save_pretrained (rundir.save_checkpoint):
    its safetensors files hold the adapters under their own names (`....q_proj.lora_A`) beside
    the frozen base, so the adapters are written in the same atomic step as the optimizer
    state that belongs to them."""
    from safetensors.torch import load_file
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    state = {k: v for f in files for k, v in load_file(os.path.join(directory, f)).items()
             if k.endswith((".lora_A", ".lora_B"))}
    want = {k for k in model.state_dict() if k.endswith((".lora_A", ".lora_B"))}
    if set(state) != want:
        raise ValueError(f"{directory} holds {len(state)} adapter matrices, this model has "
                         f"{len(want)} (another --lora-rank, or not a LoRA checkpoint)")
    model.load_state_dict(state, strict=False)


def save_model(model, tok, out_dir: str):
    """model.save_model, with the adapters merged into plain weights when the model has any."""
    if is_lora(model):
        save_merged(model, tok, out_dir)
    else:
        M.save_model(model, tok, out_dir)


def resolve_alpha(rank: int, alpha: float | None) -> float:
    """--lora-alpha defaults to 2 x rank: a scale alpha / r of 2, a common choice (QLoRA used
    alpha 16 at rank 64, scale 0.25; LoRA's scale only trades against the learning rate)."""
    return float(2 * rank if alpha is None else alpha)
