"""Run the tiny-world comparisons: several arms x several seeds, same rollout budget.

Every arm is `python train.py` with the same steps, problems per step, G and hyper-parameters,
from the same SFT model; only the flags that define the arm differ. Runs go to
experiments/runs/<suite>/<arm>/seed<k>/ (not committed; an existing finished run is reused, so
a suite can be resumed), and the summary goes to experiments/results/<suite>.json and .png.

    python experiments/run_arms.py main --seeds 0 1 2 --jobs 2
    python experiments/run_arms.py ablations --seeds 0 1 2 --jobs 2

Each job runs with one torch thread; `--jobs 2` uses both cores of a 2-core machine.

A run that a committed result already holds (the same flags, seed, steps, eval interval and
SFT model, in any experiments/results/<suite>.json) is taken from there instead of being run
again, so the reference arms (GRPO, default LANPO) are shared across suites; the output names
where each such run came from ("reused").
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SUITES = {
    # Issues 7 and 10: GRPO vs LANPO, scored under the prompt (the paper) or the plain prompt,
    # with the pool's summaries or with the oracle principle.
    "main": {
        "grpo": ["--p-feedback", "0"],
        "lanpo": [],
        "lanpo-plain": ["--score-context", "plain"],
        "oracle": ["--feedback", "oracle"],
        "oracle-plain": ["--feedback", "oracle", "--score-context", "plain"],
    },
    # Issue 7: feedback ratio, similarity threshold, feedback type, raw trajectories, leaky
    # reflection. All with the default scoring (prompt) so they ablate the paper's method.
    # The default arm (p = 0.75, gamma = 0.9, both, summaries) is main's "lanpo" and is shared.
    "p_feedback": {"p=0 (grpo)": ["--p-feedback", "0"], "p=0.5": ["--p-feedback", "0.5"],
                   "p=0.75": [], "p=1.0": ["--p-feedback", "1.0"]},
    "gamma": {"gamma=0": ["--gamma", "0"], "gamma=0.7": ["--gamma", "0.7"], "gamma=0.9": [],
              "gamma=0.95": ["--gamma", "0.95"]},
    "feedback": {
        "intra": ["--feedback", "intra"], "inter": ["--feedback", "inter"], "both": [],
        "raw": ["--inter-format", "raw"],
        "leaky": ["--feedback", "intra", "--reflection", "leaky"],
        # Issue 10: same-problem feedback scored under the plain prompt, where memorizing a
        # problem's answer from its earlier attempt would show (train accuracy > test).
        "intra-plain": ["--feedback", "intra", "--score-context", "plain"],
    },
    # Issue 7.6: no skill seeding. SFT on solutions only (python sft.py --skills solve --out
    # runs/tiny/sft-solve-only), then the same LANPO run.
    "seeding": {"three skills": [],
                "solve only": ["--init", "runs/tiny/sft-solve-only"]},
    # The same feedback ratios with plain scoring, where experience reaches the zero-shot
    # policy (DESIGN.md point 7: p = 1.0 leaves no plain rollout to learn from).
    "p_feedback_plain": {"p=0.5 plain": ["--p-feedback", "0.5", "--score-context", "plain"],
                         "p=0.75 plain": ["--score-context", "plain"],
                         "p=1.0 plain": ["--p-feedback", "1.0", "--score-context", "plain"]},
}


def finished_run(flags, seed, args):
    """A finished run with exactly these flags in any suite (the reference arms are shared)."""
    for suite, arms in SUITES.items():
        for arm, f in arms.items():
            d = os.path.join(HERE, "runs", suite, arm, f"seed{seed}")
            if f == flags and os.path.exists(os.path.join(d, "eval.json")):
                with open(os.path.join(d, "config.json")) as fh:
                    cfg = json.load(fh)
                init = f[f.index("--init") + 1] if "--init" in f else args.init
                if cfg["steps"] == args.steps and os.path.samefile(os.path.join(ROOT, cfg["init"]),
                                                              os.path.join(ROOT, init)):
                    return d
    return None


def committed_run(flags, seed, args):
    """(per-seed result, file name) of a committed run with exactly these settings, or None."""
    res_dir = os.path.join(HERE, "results")
    for name in sorted(os.listdir(res_dir)) if os.path.isdir(res_dir) else []:
        if not name.endswith(".json"):
            continue
        with open(os.path.join(res_dir, name)) as f:
            d = json.load(f)
        if "summary" not in d or d.get("steps") != args.steps or seed not in d["seeds"] or \
                d.get("init") != os.path.relpath(args.init, ROOT) or d.get("extra", []) != args.extra:
            continue
        for arm, f in d["arms"].items():
            s = d["summary"][arm]
            if f == flags and s["curve_steps"][1:2] in ([], [args.eval_every]):
                return s["per_seed"][d["seeds"].index(seed)], name
    return None


def run_one(suite, arm, flags, seed, args):
    run_dir = os.path.join(HERE, "runs", suite, arm, f"seed{seed}")
    done = finished_run(flags, seed, args)
    if done:
        return done
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--init", args.init,
           "--run-dir", run_dir, "--seed", str(seed), "--steps", str(args.steps),
           "--eval-every", str(args.eval_every), "--overwrite", *flags, *args.extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    t = time.time()
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    with open(run_dir + ".log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"{suite}/{arm}/seed{seed}: exit {rc} in {time.time() - t:.0f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"run failed, see {run_dir}.log")
    return run_dir


def read_run(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    with open(os.path.join(run_dir, "eval.json")) as f:
        ev = json.load(f)["results"]
    steps = [r for r in rows if "reward" in r]
    curve = {r["step"]: {k[5:]: v for k, v in r.items() if k.startswith("eval/")}
             for r in rows if any(k.startswith("eval/") for k in r)}

    def mean_of(key, rows=steps):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.mean(vals) if vals else None
    return {
        "final": {ds: {mode: m["mean@1"] for mode, m in res.items()} for ds, res in ev.items()},
        "self_correct_first": {ds: res["self-correct"]["first_accuracy"]
                               for ds, res in ev.items() if "self-correct" in res},
        "curve": curve,
        "train": {k: mean_of(k) for k in
                  ("reward", "reward_feedback", "reward_plain", "zero_std_frac", "kl",
                   "response_length", "coverage", "retrieval_precision", "summary_correct",
                   "summary_correct_given_right", "train_acc_rl_plain",
                   "train_acc_rl_feedback", "t_generation", "t_update", "t_pool", "t_reward")},
        # training accuracy on the rl families over the last 50 steps, to set beside the final
        # test accuracy on the same families (the leakage signature)
        "train_end": {k: mean_of(k, steps[-50:])
                      for k in ("train_acc_rl_plain", "train_acc_rl_feedback")},
        "zero_std_by_step": [r["zero_std_frac"] for r in steps],
        # seconds of training (all four phases, evaluations excluded) up to each eval step
        "seconds_at": {s: sum(r["t_generation"] + r["t_reward"] + r["t_update"] + r["t_pool"]
                              for r in steps if r["step"] <= int(s)) for s in curve},
        "train_reward_plain_by_step": [r.get("reward_plain") for r in steps],
    }


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def summarize(suite, runs):
    out = {}
    for arm, per_seed in runs.items():
        finals = [r["final"] for r in per_seed]
        arm_out = {"final": {}, "train": {}}
        for ds in finals[0]:
            for mode in finals[0][ds]:
                arm_out["final"][f"{ds} / {mode}"] = mean_std([f[ds][mode] for f in finals])
        for k in per_seed[0]["train"]:
            arm_out["train"][k] = mean_std([r["train"][k] for r in per_seed])
        arm_out["train_end"] = {k: mean_std([r.get("train_end", {}).get(k) for r in per_seed])
                                for k in ("train_acc_rl_plain", "train_acc_rl_feedback")}
        steps = sorted(per_seed[0]["curve"], key=int)
        arm_out["curve"] = {ds: [mean_std([r["curve"][s].get(ds) for r in per_seed])
                                 for s in steps] for ds in per_seed[0]["curve"][steps[0]]}
        arm_out["curve_steps"] = [int(s) for s in steps]
        arm_out["curve_seconds"] = [statistics.mean(r["seconds_at"][s] for r in per_seed)
                                    for s in steps]
        arm_out["per_seed"] = per_seed
        out[arm] = arm_out
    return out


def plot(suite, summary, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    datasets = list(next(iter(summary.values()))["curve"])
    fig, axes = plt.subplots(1, len(datasets) + 2, figsize=(5 * (len(datasets) + 2), 4))
    for ax, ds in zip(axes, datasets):
        for arm, s in summary.items():
            m = [c["mean"] for c in s["curve"][ds]]
            sd = [c["std"] for c in s["curve"][ds]]
            ax.plot(s["curve_steps"], m, label=arm, marker=".")
            ax.fill_between(s["curve_steps"], [a - b for a, b in zip(m, sd)],
                            [a + b for a, b in zip(m, sd)], alpha=0.15)
        ax.set_title(f"zero-shot accuracy, {ds}")
        ax.set_xlabel("RL step")
        ax.set_ylim(0, 1)
    ax = axes[-2]   # equal wall-clock: the same curve against seconds of training
    for arm, s in summary.items():
        ax.plot(s["curve_seconds"], [c["mean"] for c in s["curve"][datasets[0]]], label=arm,
                marker=".")
    ax.set_title(f"{datasets[0]} against training seconds")
    ax.set_xlabel("seconds (generation + reward + update + pool)")
    ax.set_ylim(0, 1)
    ax = axes[-1]
    for arm, s in summary.items():
        per_seed = [r["zero_std_by_step"] for r in s["per_seed"]]
        n = min(len(z) for z in per_seed)
        avg = [statistics.mean(z[i] for z in per_seed) for i in range(n)]
        k = 10   # moving average over 10 steps
        ax.plot(range(k, n + 1), [statistics.mean(avg[i - k:i]) for i in range(k, n + 1)],
                label=arm)
    ax.set_title("zero-variance group fraction (10-step mean)")
    ax.set_xlabel("RL step")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"tiny world, suite '{suite}' (mean +- std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", choices=SUITES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--init", default=os.path.join(ROOT, "runs", "tiny", "sft"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arms", nargs="*", default=None, help="only these arms")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="flags passed to every train.py run")
    args = ap.parse_args()
    arms = {a: f for a, f in SUITES[args.suite].items() if not args.arms or a in args.arms}
    jobs = [(arm, flags, seed) for seed in args.seeds for arm, flags in arms.items()]

    def result_of(job):
        arm, flags, seed = job
        if not finished_run(flags, seed, args):
            committed = committed_run(flags, seed, args)
            if committed:
                return committed
        return read_run(run_one(args.suite, arm, flags, seed, args)), None

    with ThreadPoolExecutor(args.jobs) as ex:
        results = list(ex.map(result_of, jobs))
    runs, reused = {}, {}
    for (arm, _, seed), (result, source) in zip(jobs, results):
        runs.setdefault(arm, []).append(result)
        if source:
            reused.setdefault(arm, {})[f"seed{seed}"] = source
    summary = summarize(args.suite, runs)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = {"command": "python experiments/run_arms.py " + " ".join(sys.argv[1:]),
           "suite": args.suite, "arms": arms, "seeds": args.seeds, "steps": args.steps,
           "init": os.path.relpath(args.init, ROOT), "extra": args.extra, "reused": reused,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads_per_job": 1, "jobs": args.jobs},
           "summary": summary}
    with open(os.path.join(HERE, "results", f"{args.suite}.json"), "w") as f:
        json.dump(out, f, indent=1)
    plot(args.suite, summary, os.path.join(HERE, "results", f"{args.suite}.png"))
    print(f"\n{'arm':<14}" + "".join(f"{k:>30}" for k in next(iter(summary.values()))["final"]
                                     if "zero-shot" in k))
    for arm, s in summary.items():
        cells = [f"{v['mean']:.3f} +- {v['std']:.3f}" for k, v in s["final"].items()
                 if "zero-shot" in k]
        print(f"{arm:<14}" + "".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
