"""The mechanism, measured in the run's own optimizer step: what one real update of the paper's
algorithm does to the zero-shot policy pi(y | x), against the same update scored plain or
corrected.

At a checkpoint of a real run of the paper's algorithm (`train.py` defaults; its model, its
AdamW moments, its pool and its random streams), the next step's batch is built exactly as the
run builds it (the same problems, contexts, rollouts and rewards: `train.build_prompts`,
`M.sample`, `reward`), then the update is taken four times on copies of the model, each with a
copy of the run's optimizer state (`train.update`, so clipping, the KL term and Adam's warm
moments are the run's):

    prompt     the paper: A_i grad log pi(y | x, c)          (what the run itself does next)
    plain      A_i grad log pi(y | x) for y ~ pi(. | x, c)    (no importance weight)
    corrected  plain with the truncated per-token weight min(pi(y_t | x) / pi(y_t | x, c), 2)
    none       a zero gradient: what the step does from Adam's moments alone

With warm moments most of an Adam step is the momentum of earlier steps, the same for every
scoring; the step's own part is the difference from `none`, delta_s = theta_s - theta_none.
Measured on held-out successes, the 216 rl-test problems' gold worked solutions y* (the world's
right procedure, never a training problem): the change of the mean log pi(y* | x) and of the
mean probability of the right procedure token (the first response token; the arithmetic after
it is right in practice, so this is the expected change of sampled accuracy). Reported per
checkpoint: each scoring's own gain, their ratios to plain's (magnitudes kept: not a sign or a
normalized share), cos(delta_s, delta_plain) of the parameter updates and ||delta_s|| /
||delta_plain||; per SFT seed, then the mean over SFT seeds with a t interval, and for
"corrected - plain" and "prompt - plain" the paired sign-flip p over SFT seeds.

A step-0 checkpoint is not measured: at step 1 the pool is empty, every row is plain, and the
three scorings are one update by construction (tests/test_step_mechanism.py checks that). The
checkpoints are the suite's runs: experiments/run_arms.py's `controls_here_step25`,
`controls_here_step100` and `controls_here` (200 steps) lanpo runs, RL seed 0 (each longer run
continues the shorter one, so the three are one run's steps 25, 100 and 200).

    python experiments/step_mechanism.py --sft-seeds 10 11 12 13 14 15 16 17 18 19 [--steps 25 100]
    python experiments/step_mechanism.py --size h384-l6 --sft-seeds 10 11 12 13 14 --steps 25 200

Writes experiments/results/step_mechanism.json; with --size (the size axis), the checkpoints are
that size's `sizes_<size>_step25` and `sizes_<size>` runs, and it writes
step_mechanism_<size>.json.
"""
import argparse
import copy
import json
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import grpo  # noqa: E402
import prompts  # noqa: E402
import train  # noqa: E402
from pool import Pool  # noqa: E402
from support import config, data, lora, rundir  # noqa: E402
from support import controls as C  # noqa: E402
from support import model as M  # noqa: E402
from support import world as W  # noqa: E402
import run_arms  # noqa: E402
from sft_draws import T975, sign_flip_p  # noqa: E402

SCORINGS = ("prompt", "plain", "corrected")


def load_checkpoint(run_dir):
    """The run's settings, model, reference, tokenizer, optimizer state, pool and random
    stream, as `train.py --resume` would restore them."""
    args = config.train_args(["--resume", "--run-dir", run_dir])
    args.precision_used = M.choose_precision(args.precision, args.device, say=False)
    ckpt = rundir.find_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint")
    world = W.TinyWorld()
    model, ref_model, tok = train.load_models(args, ckpt, world)
    state = rundir.load_state(ckpt)
    rng = random.Random()
    rundir.set_rng_state(rng, state["rng"])   # Python's and torch's streams: the next step's
    return args, model, ref_model, tok, state, rng, Pool.load(os.path.join(ckpt, "pool.jsonl"))


def next_batch(model, tok, pool, train_set, args, rng, world):
    """Steps 1-5 of train_step, as the run would take them next: problems, prompts with their
    contexts, rollouts, rewards, advantages."""
    problems = rng.sample(train_set, min(args.problems_per_step, len(train_set)))
    texts, has_context, _ = train.build_prompts(problems, C.make(args, pool, world), args, rng)
    rollouts = M.sample(model, tok, texts, n=1, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p,
                        micro_batch=args.sample_micro_batch)
    G = args.group_size
    rewards = [train.reward(y, problems[i // G]["answer"]) for i, y in enumerate(rollouts.texts)]
    advantages = grpo.group_advantages(torch.tensor(rewards), G, scale=args.scale_rewards)
    return problems, has_context, rollouts, rewards, advantages


def updated_copies(model, ref_model, tok, opt_state, batch, args):
    """{scoring: the model after one update of that scoring} from the same weights, batch and
    optimizer state; "none": the same optimizer step with a zero gradient."""
    problems, has_context, rollouts, _, advantages = batch
    out = {}
    for scoring in SCORINGS + ("none",):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(lora.trainable(m), lr=args.lr, weight_decay=args.weight_decay)
        opt.load_state_dict(copy.deepcopy(opt_state))
        if scoring == "none":
            for p in lora.trainable(m):
                p.grad = torch.zeros_like(p)
            opt.step()
        else:
            a = copy.copy(args)
            a.score_context = scoring
            score_ids = C.scoring_prompts(tok, problems, rollouts.prompt_ids, has_context, a)
            if train.update(m, ref_model, opt, rollouts, score_ids, advantages, a) is None:
                raise SystemExit("the update was skipped (non-finite): nothing to measure")
        out[scoring] = m
    return out


def held_out(tok, world):
    """The rl-test problems' plain prompts and gold worked solutions y* (ids, mask)."""
    problems = world.problems("rl", "test")
    prompt_ids = M.encode_prompts(tok, [prompts.solve_prompt(p["question"]) for p in problems])
    ys = [tok(world.solution(p), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
          for p in problems]
    T = max(map(len, ys))
    resp = torch.tensor([y + [tok.pad_token_id or 0] * (T - len(y)) for y in ys])
    mask = torch.tensor([[1.0] * len(y) + [0.0] * (T - len(y)) for y in ys])
    return prompt_ids, resp, mask


@torch.no_grad()
def zero_shot(model, target, temperature):
    """Per held-out problem: log pi(y* | x) and pi(first token of y* | x) (the procedure)."""
    prompt_ids, resp, mask = target
    lp = M.token_logprobs(model, prompt_ids, resp, mask, temperature=temperature)
    return (lp * mask).sum(1), lp[:, 0].exp()


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in lora.trainable(model)])


def measure(run_dir, batches=1):
    """The own-step effects of each scoring at this checkpoint, over `batches` batches: the
    first is the run's own next step, the next ones continue its random stream."""
    args, model, ref_model, tok, state, rng, pool = load_checkpoint(run_dir)
    world = W.TinyWorld()
    train_set, _ = data.problems(args.data, args.eval_data, args.eval_limit,
                                 args.question_field, args.answer_field)
    target = held_out(tok, world)
    lp0, pr0 = zero_shot(model, target, args.temperature)
    rows = []
    for _ in range(batches):
        batch = next_batch(model, tok, pool, train_set, args, rng, world)
        models = updated_copies(model, ref_model, tok, state["optimizer"], batch, args)
        theta_none = flat(models["none"])
        lp_none, pr_none = zero_shot(models["none"], target, args.temperature)
        delta = {s: flat(models[s]) - theta_none for s in SCORINGS}
        row = {"context_rows": sum(batch[1]), "reward": sum(batch[3]) / len(batch[3]),
               "momentum_only": {"d_logp": float((lp_none - lp0).mean()),
                                 "d_p_procedure": float((pr_none - pr0).mean())}}
        for s in SCORINGS:
            lp, pr = zero_shot(models[s], target, args.temperature)
            row[s] = {"own_d_logp": float((lp - lp_none).mean()),
                      "own_d_p_procedure": float((pr - pr_none).mean()),
                      "norm": float(delta[s].norm()),
                      "cos_plain": float(delta[s] @ delta["plain"]
                                         / (delta[s].norm() * delta["plain"].norm() + 1e-30))}
        rows.append(row)
    return {"step": state["step"], "batches": rows}


def mean_t(values):
    """Mean over SFT seeds with a t interval (None below two seeds)."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    m = sum(v) / len(v)
    if len(v) < 2:
        return {"mean": m, "t95": None, "n": 1}
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5
    half = T975[len(v) - 1] * sd / len(v) ** 0.5
    return {"mean": m, "t95": [m - half, m + half], "n": len(v)}


def ratio_interval(num, den, resamples=10_000, seed=0):
    """95% percentile interval of mean(num) / mean(den) over SFT seeds resampled with
    replacement (paired: one draw of seeds for both), seed 0; None where the resampled mean(den)
    is not above 0 in more than 2.5% of the draws (the ratio is then unbounded)."""
    rng, n = random.Random(seed), len(num)
    ratios, undefined = [], 0
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        d = sum(den[i] for i in idx) / n
        if d <= 0:
            undefined += 1
            continue
        ratios.append(sum(num[i] for i in idx) / n / d)
    if undefined > 0.025 * resamples:
        return None
    ratios.sort()   # percentiles of the defined draws (all but at most 2.5% of them)
    return [ratios[int(0.025 * len(ratios))], ratios[int(0.975 * (len(ratios) - 1))]]


def summarize(per_seed):
    """per_seed {sft seed: measure()}: per scoring, the own gains (mean over a seed's batches),
    the ratios to plain's, the cosines and norms; over seeds, means with t intervals and the
    paired sign-flip p of prompt - plain and corrected - plain."""
    def seed_mean(res, f):
        return sum(f(b) for b in res["batches"]) / len(res["batches"])
    out = {}
    for key in ("own_d_logp", "own_d_p_procedure"):
        vals = {s: {k: seed_mean(r, lambda b: b[s][key]) for k, r in per_seed.items()}
                for s in SCORINGS}
        out[key] = {s: mean_t(list(vals[s].values())) for s in SCORINGS}
        for s in ("prompt", "corrected"):
            diffs = [vals[s][k] - vals["plain"][k] for k in per_seed]
            means = {x: out[key][x]["mean"] for x in (s, "plain")}
            out[key][f"{s} - plain"] = {**mean_t(diffs), "sign_flip_p": sign_flip_p(diffs),
                                        "ratio_of_means": means[s] / means["plain"]
                                        if means["plain"] else None,
                                        "ratio_95": ratio_interval(
                                            [vals[s][k] for k in per_seed],
                                            [vals["plain"][k] for k in per_seed])}
    for s in ("prompt", "corrected"):
        out[f"cos({s}, plain)"] = mean_t([seed_mean(r, lambda b: b[s]["cos_plain"])
                                          for r in per_seed.values()])
        out[f"norm({s}) / norm(plain)"] = mean_t(
            [seed_mean(r, lambda b: b[s]["norm"] / b["plain"]["norm"]) for r in per_seed.values()])
    out["momentum_only_d_logp"] = mean_t([seed_mean(r, lambda b: b["momentum_only"]["d_logp"])
                                          for r in per_seed.values()])
    return out


def checkpoint_runs(sft_seed, size=None):
    """The paper's run of this SFT seed (RL seed 0) at steps 25, 100 and 200: stratum C's
    controls suite, or, for a model size of the size axis, its `sizes_<size>` suites."""
    suite = f"sizes_{size}" if size else "controls_here"
    return {step: os.path.join(HERE, "runs", suite + (f"_step{step}" if step != 200 else ""),
                               "lanpo", f"sft{sft_seed}-rl0") for step in (25, 100, 200)}


def results_path(size=None):
    return os.path.join(HERE, "results", f"step_mechanism{'_' + size if size else ''}.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-seeds", type=int, nargs="+", default=list(range(10, 20)))
    ap.add_argument("--batches", type=int, default=4,
                    help="batches per checkpoint (the first: the run's own next step)")
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 100, 200],
                    help="checkpoints to measure; the others already in the results are kept")
    ap.add_argument("--size", choices=run_arms.SIZES, default=None,
                    help="the runs of this model size (run_arms.py sizes --size ...); writes "
                         "step_mechanism_<size>.json")
    ap.add_argument("--summarize-only", action="store_true",
                    help="recompute the summaries of the measurements already in the results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = results_path(args.size)
    results = json.load(open(path))["steps"] if os.path.exists(path) else {}
    if args.summarize_only:
        for r in results.values():
            r["summary"] = summarize(r["per_seed"])
        with open(path, "w") as f:
            json.dump({"steps": results}, f, indent=1)
        return
    for step in args.steps:
        # seeds measured before (same batches) are kept: a suite still running is measured as
        # its runs finish
        before = results.get(str(step), {})
        per_seed = {int(k): v for k, v in before.get("per_seed", {}).items()
                    if before.get("batches") == args.batches and int(k) in args.sft_seeds}
        for s in args.sft_seeds:
            if s in per_seed:
                continue
            run_dir = checkpoint_runs(s, args.size)[step]
            if not os.path.exists(os.path.join(run_dir, "eval.json")):   # finished at `step`
                print(f"step {step}, SFT seed {s}: not finished yet ({run_dir})")
                continue
            per_seed[s] = measure(run_dir, args.batches)
            assert per_seed[s]["step"] == step, (run_dir, per_seed[s]["step"])
            print(f"step {step}, SFT seed {s}: " + ", ".join(
                f"{k} {per_seed[s]['batches'][0][k]['own_d_logp']:+.2e}" for k in SCORINGS),
                flush=True)
        if len(per_seed) >= 2:
            results[str(step)] = {"command": " ".join(["python experiments/step_mechanism.py",
                                                       *sys.argv[1:]]),
                                  "machine": run_arms.machine(), "batches": args.batches,
                                  "sft_seeds": sorted(per_seed),
                                  "per_seed": per_seed, "summary": summarize(per_seed)}
    out = {"steps": dict(sorted(results.items(), key=lambda kv: int(kv[0])))}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
