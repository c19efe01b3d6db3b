"""Seconds per step with 1 and 2 processes (torchrun, ranks.py), side by side on the CPU.

The same train.py run (tiny world, default flags, --eval-every 0, no final evaluation) is timed
as
  1 process, 1 thread        python train.py           (OMP_NUM_THREADS=1)
  1 process, 2 threads       python train.py           (OMP_NUM_THREADS=2)
  2 processes, 1 thread each torchrun --nproc_per_node 2 train.py
so the last two use the same two cores. A step's seconds are the sum of the phases train.py
logs (t_pool, t_generation, t_reward, t_update: rank 0's, which include its waits for the other
rank where they meet), averaged after the first --skip steps; the wall-clock of the whole
command (start-up included) is reported too. The arms run one after the other, so machine
noise is not shared as in costs.py: rerun to see the spread. Each arm records the machine's
1-minute load average before it starts: on a loaded 2-core machine two threads of one process
wait for each other (torch's OpenMP threads spin), and the 2-thread arm suffers most.

    python experiments/costs_ranks.py [--init runs/tiny/sft] [--steps 30] [--skip 5]

Writes experiments/results/costs_ranks.json (or --out).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("t_pool", "t_generation", "t_reward", "t_update")
ARMS = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (1, 2),
        "2 processes, 1 thread each": (2, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default=os.path.join("runs", "tiny", "sft"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                  "costs_ranks.json"))
    ap.add_argument("train_flags", nargs="*", help="after --: flags for every arm")
    args = ap.parse_args()
    out = {}
    for name, (procs, threads) in ARMS.items():
        run_dir = tempfile.mkdtemp()
        launch = [sys.executable] if procs == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node", str(procs)]
        cmd = [*launch, "train.py", "--init", args.init, "--run-dir", run_dir, "--overwrite",
               "--steps", str(args.steps), "--eval-every", "0", "--no-final-eval",
               *args.train_flags]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
        load = os.getloadavg()[0]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        rows = rows[args.skip:]
        out[name] = {"seconds_per_step": statistics.mean(sum(r[k] for k in PHASES)
                                                         for r in rows),
                     **{k: statistics.mean(r[k] for r in rows) for k in PHASES},
                     "wall_clock_s": wall, "load_average_before": load,
                     "reward": statistics.mean(r["reward"] for r in rows)}
        print(f"{name:28} {out[name]['seconds_per_step']:.3f} s/step   "
              f"(wall-clock {wall:.1f} s for {args.steps} steps; load {load:.1f} before)",
              flush=True)
    result = {"command": "python experiments/costs_ranks.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "steps": args.steps, "skipped": args.skip, "arms": out}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
