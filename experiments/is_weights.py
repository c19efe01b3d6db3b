"""What the importance weight of `--score-context corrected` does to a success the context made.

Corrected scoring weights each token of a feedback-aware response y ~ pi(. | x, c) by
w_t = min(pi(y_t | x, y_<t) / pi(y_t | x, c, y_<t), cap) (C.truncated_is_weight). On the tiny
world a response's first token is its procedure ("add then add"), the choice the context is
there to change; the tokens after it (arithmetic) follow from it whatever the prompt. This
script measures w on the procedure token and on the rest, for the feedback-aware rollouts that
succeed, per rl family:

- `--models`: the SFT models (step 0) with the context a pool gives once it holds the family's
  principle ("Principles: <the right procedure>"), 16 training problems x k samples per family;
- `--runs`: finished training runs (their final model and pool), with the contexts their own
  pool gives at the end (train.build_prompts with the run's config, every rollout
  feedback-aware).

    python experiments/is_weights.py --models runs/tiny/sft-seed0 ... \
        --runs experiments/runs/controls/lanpo-corrected/sft0-rl0 ...

Writes experiments/results/is_weights.json (command, machine, per model / run and family).
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

from support import controls as C  # noqa: E402
from support import model as M  # noqa: E402
import prompts  # noqa: E402
import train  # noqa: E402
from support import world as W  # noqa: E402
from pool import Pool  # noqa: E402
from reward import reward  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@torch.no_grad()
def weights_of_successes(model, tok, problems, context_prompts, k, cap, seed):
    """Per family: feedback-aware success rate, and over the successes the mean weight of the
    procedure token (the first response token), of the other response tokens, and the mean
    product of the capped weights over the whole response."""
    torch.manual_seed(seed)
    out = M.sample(model, tok, context_prompts, n=k, temperature=1.0, max_new_tokens=32,
                   micro_batch=512)
    ok = [i for i, t in enumerate(out.texts) if reward(t, problems[i // k]["answer"]) > 0]
    by = {}
    for i in range(len(out.texts)):
        by.setdefault(problems[i // k]["family"], {"n": 0, "succ": 0, "w_proc": [], "w_rest": [],
                                                   "w_prod": []})["n"] += 1
    if ok:
        plain = M.encode_prompts(tok, [prompts.solve_prompt(problems[i // k]["question"])
                                       for i in ok])
        ids, mask = out.response_ids[ok], out.response_mask[ok]
        target = M.token_logprobs(model, plain, ids, mask)
        behavior = M.token_logprobs(model, [out.prompt_ids[i] for i in ok], ids, mask)
        w = C.truncated_is_weight(target, behavior, cap) * mask
        for j, i in enumerate(ok):
            b = by[problems[i // k]["family"]]
            n_tok = int(mask[j].sum())
            b["succ"] += 1
            b["w_proc"].append(float(w[j, 0]))
            if n_tok > 1:
                b["w_rest"].append(float(w[j, 1:n_tok].mean()))
            b["w_prod"].append(float(torch.prod(w[j, :n_tok])))
    mean = lambda xs: statistics.mean(xs) if xs else None   # noqa: E731
    return {f: {"rollouts": b["n"], "success": b["succ"] / b["n"], "successes": b["succ"],
                "w_procedure_token": mean(b["w_proc"]), "w_other_tokens": mean(b["w_rest"]),
                "w_product": mean(b["w_prod"])} for f, b in sorted(by.items())}


def training_problems(world, per_family):
    return [p for f in world.families_of("rl")
            for p in [q for q in world.problems("rl", "train") if q["family"] == f.name]
            [:per_family]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=[], help="SFT model directories")
    ap.add_argument("--runs", nargs="*", default=[], help="finished train.py run directories")
    ap.add_argument("--k", type=int, default=8, help="samples per problem")
    ap.add_argument("--per-family", type=int, default=16, help="training problems per family")
    ap.add_argument("--cap", type=float, default=2.0, help="the weight's cap (train.py --is-cap)")
    args = ap.parse_args()
    if not args.models and not args.runs:
        ap.error("give --models and/or --runs")
    world, t0 = W.TinyWorld(), time.time()
    problems = training_problems(world, args.per_family)
    start = {f.name: f.start_rate for f in world.families_of("rl")}
    res = {"models": {}, "runs": {}}
    for path in args.models:
        model, tok = M.load_model(path, device="cpu")
        ctx = [prompts.feedback_prompt(p["question"], [world.oracle_principle(p)], [])
               for p in problems]
        res["models"][path] = weights_of_successes(model, tok, problems, ctx, args.k, args.cap,
                                                   seed=1)
        print(path, {f: v["w_procedure_token"] for f, v in res["models"][path].items()},
              flush=True)
    for run in args.runs:
        with open(os.path.join(run, "config.json")) as f:
            cfg = argparse.Namespace(**json.load(f))
        cfg.p_feedback = 1.0   # every rollout feedback-aware (where the pool has something)
        cfg.group_size = 1     # one prompt per problem; k samples of it below
        model, tok = M.load_model(os.path.join(run, "final"), device="cpu")
        pool = Pool.load(os.path.join(run, "pool.jsonl"))
        ctx, has, _ = train.build_prompts(problems, C.make(cfg, pool, world), cfg,
                                          random.Random(0))
        keep = [i for i, h in enumerate(has) if h]
        fam = weights_of_successes(model, tok, [problems[i] for i in keep],
                                   [ctx[i] for i in keep], args.k, args.cap, seed=1)
        res["runs"][run] = {"score_context": cfg.score_context, "feedback": cfg.feedback,
                            "steps": cfg.steps, "families": fam}
        print(run, {f: v["w_procedure_token"] for f, v in fam.items()}, flush=True)
    out = {"command": "python experiments/is_weights.py " + " ".join(sys.argv[1:]),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "seconds": round(time.time() - t0, 1), "designed_start": start, "cap": args.cap,
           **res}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "is_weights.json"), "w") as f:
        json.dump(out, f, indent=1)
    fams = sorted(start, key=start.get)
    rows = [(os.path.basename(p.rstrip("/")), r) for p, r in res["models"].items()] + \
           [("/".join(p.rstrip("/").split("/")[-2:]), r["families"])
            for p, r in res["runs"].items()]
    print("\nmean weight of the procedure token over successful feedback-aware rollouts")
    print(f"{'':<28}" + "".join(f"{f + f' ({start[f]:.2f})':>14}" for f in fams))
    for name, r in rows:
        print(f"{name:<28}" + "".join(
            f"{r[f]['w_procedure_token']:>14.3f}" if f in r and r[f]["w_procedure_token"]
            is not None else f"{'-':>14}" for f in fams))


if __name__ == "__main__":
    main()
