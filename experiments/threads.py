"""How many torch threads should the tiny preset use? SFT and RL steps, 1 and 2 threads (and 2
with OMP_WAIT_POLICY=PASSIVE: waiting threads sleep instead of spinning), on an idle machine and
on one where another process keeps a core busy (a laptop with a browser open).

Each cell runs `python sft.py` (a short SFT from scratch) or `python train.py` (a short RL run
from an SFT model) as a user would, with `--threads N`, and reports seconds per step of the
steps themselves (SFT: sft_report.json's training time; RL: the step's phases in metrics.jsonl),
start-up and evaluation left out. The cells
are interleaved (idle 1, 2, 2 passive, loaded 1, 2, 2 passive, and again) so that drift of a shared
machine falls on every cell alike; each cell is the median of its repeats.

    python experiments/threads.py --init runs/tiny/sft [--repeats 2]

Writes experiments/results/threads.json.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_STEPS, RL_STEPS = 60, 12


def run(cmd, passive=False):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if passive:   # OpenMP threads sleep instead of spinning while they wait for work
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, capture_output=True, env=env)


def sft_seconds(out):
    with open(os.path.join(out, "sft_report.json")) as f:
        return json.load(f)["history"][-1]["t_train"]


def rl_seconds(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return sum(v for r in rows for k, v in r.items() if k.startswith("t_"))


def busy():
    """Another process that keeps one core busy, as a browser tab does."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", required=True, help="a tiny-world SFT model for the RL runs")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    cells = {}
    for rep in range(args.repeats):
        for load in ("idle", "loaded"):
            for threads in ("1", "2", "2 passive"):
                hog = busy() if load == "loaded" else None
                n, passive = threads[0], threads.endswith("passive")
                try:
                    run(["sft.py", "--steps", str(SFT_STEPS), "--examples", "2000",
                         "--threads", n, "--out", f"{tmp}/sft", "--overwrite"], passive)
                    run(["train.py", "--init", args.init, "--steps", str(RL_STEPS),
                         "--eval-every", "0", "--no-final-eval", "--threads", n,
                         "--run-dir", f"{tmp}/rl", "--overwrite"], passive)
                    sft, rl = sft_seconds(f"{tmp}/sft"), rl_seconds(f"{tmp}/rl")
                finally:
                    if hog:
                        hog.kill()
                for stage, seconds, steps in (("sft", sft, SFT_STEPS), ("rl", rl, RL_STEPS)):
                    cells.setdefault(f"{stage} {load} {threads}", []).append(seconds / steps)
                print(rep, load, threads, f"sft {sft:.1f} s, rl {rl:.1f} s", flush=True)
    out = {"command": "python experiments/threads.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "what": f"seconds per step ({SFT_STEPS} SFT steps of batch 64, {RL_STEPS} RL steps of "
                   f"8 x 8 rollouts), median of {args.repeats} interleaved repeats",
           "cells": {k: round(statistics.median(v), 3) for k, v in cells.items()},
           "raw": cells}
    for stage in ("sft", "rl"):
        for load in ("idle", "loaded"):
            one, two, calm = (out["cells"][f"{stage} {load} {t}"] for t in ("1", "2", "2 passive"))
            print(f"{stage:4} {load:7} 1 thread {one:.3f} s/step, 2 threads {two:.3f} "
                  f"({two / one:.2f}x), 2 passive {calm:.3f} ({calm / one:.2f}x)")
    with open(os.path.join(ROOT, "experiments", "results", "threads.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
