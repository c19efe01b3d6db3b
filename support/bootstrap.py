"""Seed data for real models: bootstrapped from the model itself, or the user's own JSONL.

The paper's seed data came from a stronger model; here a model that already solves some problems
(Qwen2.5-Instruct on GSM8K does, SmolLM2-135M does not) answers the skill prompts on training
problems, and only outputs that pass a check are kept (rejection sampling). The gold answer only
filters outputs; it never enters a prompt. Bootstrapping is the expensive part of
`sft.py --preset qwen`, so it is written to the output directory as it is made and a restart
with the same settings continues it.
"""
import json
import os
import random

import torch

import prompts
from pool import Entry, Pool, parse_summary
from reward import reward
from support import data, rundir
from support import model as M
from support.errors import UserError, oom_hint

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
    """Rejection sampling on the skills, at most one example per skill and problem; the gold
    answer only filters, it never enters a prompt. After each batch of problems one JSONL line
    per problem goes to `progress_path`; a restart with the same settings samples only what is
    missing, each batch from its own seed, so the result is the uninterrupted one's."""
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
            if right:   # respond: one of the n samples that is right
                examples.append({"prompt": prompts.solve_prompt(p["question"]),
                                 "response": right[0], "skill": "solve"})
            # summarize: kept if it parses and states a method, not the number it should find
            t = texts[i]
            parsed = parse_summary(t)
            if parsed is not None and (parsed[0] or parsed[1]) and p["answer"] not in t:
                examples.append({"prompt": summarize[i], "response": t.strip(),
                                 "skill": "summarize"})
                summary = [list(parsed[0]), list(parsed[1])]
            # inspect: a reflection on an attempt drawn whatever its reward (as in RL), if right
            t = texts[len(batch) + i]
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


def bootstrap(args, model, tok) -> list[dict]:
    """sft.py's seed data for a real model: bootstrapped from --bootstrap-problems training
    problems, written to <out>/bootstrap.jsonl as it is made. A restart with the same settings
    reuses it, with or without --overwrite (which only discards one made with other settings);
    --sample-micro-batch may change on a restart (after running out of memory, say)."""
    problems = data.train_problems(args.data, limit=args.bootstrap_problems)
    print(f"bootstrapping seed data from {len(problems)} problems ...")
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
    return examples
