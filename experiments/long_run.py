"""Stability over a long run: summarize a finished train.py run into experiments/results/long_run.

    python train.py --steps 600 --run-dir runs/tiny/rl-long --eval-every 50 --ckpt-every 50
    python experiments/long_run.py runs/tiny/rl-long

Records whether every logged metric stayed finite, the skipped updates, the range of KL,
response length, gradient norm and truncation, and zero-shot accuracy at every evaluation; it
copies the run's eval.json and curves.png beside the summary.
"""
import json
import math
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    run_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny/rl-long"
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    steps = [r for r in rows if "reward" in r]
    numbers = [v for r in rows for v in r.values() if isinstance(v, float)]

    def values(key):
        return [r[key] for r in steps if r.get(key) is not None]
    summary = {
        "command": f"python train.py --steps {cfg['steps']} --run-dir {cfg['run_dir']} "
                   f"--eval-every {cfg['eval_every']} --ckpt-every {cfg['ckpt_every']}",
        "seed": cfg["seed"], "steps": len(steps),
        "all_metrics_finite": all(math.isfinite(v) for v in numbers),
        "skipped_updates": steps[-1]["skipped_total"],
        "kl": {"mean": sum(values("kl")) / len(values("kl")), "max": max(values("kl"))},
        "response_length": {"min": min(values("response_length")),
                            "max": max(values("response_length"))},
        "grad_norm_max": max(values("grad_norm")),
        "truncated_frac_max": max(values("truncated_frac")),
        "zero_shot_by_step": {r["step"]: {k[5:]: v for k, v in r.items() if k.startswith("eval/")}
                              for r in rows if any(k.startswith("eval/") for k in r)},
        "rl_families_by_step": {r["step"]: r["eval_families"] for r in rows
                                if "eval_families" in r},
    }
    out = os.path.join(HERE, "results", "long_run")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for name in ("eval.json", "curves.png"):
        shutil.copy(os.path.join(run_dir, name), os.path.join(out, name))
    print(json.dumps({k: v for k, v in summary.items() if k != "rl_families_by_step"}, indent=1))


if __name__ == "__main__":
    main()
