"""How many torch threads should the tiny preset use? SFT and RL steps on an idle machine and on
one where another process keeps a core busy (a laptop with a browser open), with: 1 thread; 2
threads that spin a while when they wait (libgomp's own default, GOMP_SPINCOUNT=300000); 2 that
sleep when they wait (OMP_WAIT_POLICY=PASSIVE); and the default (no --threads: the cores other
programs leave free, support/config.py's Threads).

Each cell runs `python sft.py` (a short SFT from scratch) or `python train.py` (a short RL run
from an SFT model) as a user would, with `--threads N`, and reports seconds per step of the
steps themselves (SFT: sft_report.json's training time; RL: the step's phases in metrics.jsonl),
start-up and evaluation left out. The cells
are interleaved (idle 1, 2, 2 passive, default, then loaded the same, and again) so that drift of a shared
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


CELLS = {"1": (["--threads", "1"], {}),
         # libgomp's behaviour when nothing is set: spin 300,000 rounds, then sleep
         "2": (["--threads", "2"], {"GOMP_SPINCOUNT": "300000"}),
         "2 passive": (["--threads", "2"], {"OMP_WAIT_POLICY": "PASSIVE"}),
         "default": ([], {})}


def run(cmd, env_extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, capture_output=True,
                         text=True, env={**env, **env_extra})
    return next((line.strip() for line in out.stdout.splitlines() if "threads:" in line), "")


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
    cells, chosen = {}, {}
    for rep in range(args.repeats):
        for load in ("idle", "loaded"):
            for threads, (flags, env) in CELLS.items():
                hog = busy() if load == "loaded" else None
                try:
                    said = run(["sft.py", "--steps", str(SFT_STEPS), "--examples", "2000",
                                *flags, "--out", f"{tmp}/sft", "--overwrite"], env)
                    run(["train.py", "--init", args.init, "--steps", str(RL_STEPS),
                         "--eval-every", "0", "--no-final-eval", *flags,
                         "--run-dir", f"{tmp}/rl", "--overwrite"], env)
                    sft, rl = sft_seconds(f"{tmp}/sft"), rl_seconds(f"{tmp}/rl")
                finally:
                    if hog:
                        hog.kill()
                for stage, seconds, steps in (("sft", sft, SFT_STEPS), ("rl", rl, RL_STEPS)):
                    cells.setdefault(f"{stage} {load} {threads}", []).append(seconds / steps)
                chosen.setdefault(f"{load} {threads}", []).append(said)
                print(rep, load, threads, f"sft {sft:.1f} s, rl {rl:.1f} s ({said})", flush=True)
    out = {"command": "python experiments/threads.py " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
           "what": f"seconds per step ({SFT_STEPS} SFT steps of batch 64, {RL_STEPS} RL steps of "
                   f"8 x 8 rollouts), median of {args.repeats} interleaved repeats",
           "cells": {k: round(statistics.median(v), 3) for k, v in cells.items()},
           "raw": cells, "threads_said": chosen}
    for stage in ("sft", "rl"):
        for load in ("idle", "loaded"):
            one, two, calm, auto = (out["cells"][f"{stage} {load} {t}"] for t in CELLS)
            print(f"{stage:4} {load:7} 1 thread {one:.3f} s/step, 2 threads {two:.3f} "
                  f"({two / one:.2f}x), 2 passive {calm:.3f} ({calm / one:.2f}x), "
                  f"default {auto:.3f} ({auto / one:.2f}x)")
    with open(os.path.join(ROOT, "experiments", "results", "threads.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
