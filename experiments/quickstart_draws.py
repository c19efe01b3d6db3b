"""What the README's quickstart ends at, over many SFT draws: `python train.py` with its default
flags (120 LANPO steps) from the SFT model of each seed, one torch thread per run.

The quickstart is one draw (`python sft.py`, seed 0, on the reader's machine, whose kernels make
their own SFT model); the range over many seeds is what a reader should expect. Per SFT seed:
rl-test greedy zero-shot of the SFT model (step 0) and after RL, sampled mean@8 after RL, and
the run's wall-clock seconds; the SFT models are run_arms' (`runs/tiny/sft-seedS`, made if
missing), their sha256 recorded.

    python experiments/quickstart_draws.py --sft-seeds 10 11 12 13 14 15 16 17 18 19
    python experiments/quickstart_draws.py --sft-seeds 0 --out quickstart_seed0   # the README's

(The README's own draw, seed 0, is `python sft.py && python train.py`: sft.py's default seed
is 0, and on the AVX2 machine that made quickstart_seed0.json one thread and the default two
gave the same table to the digit.)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run_arms  # noqa: E402


def one(sft_seed):
    """Run the quickstart's train.py from this SFT seed (or reuse a finished run)."""
    init = run_arms.ensure_sft(sft_seed)
    run_dir = os.path.join(ROOT, "runs", "tiny", f"quickstart-sft{sft_seed}")
    t, ran = time.time(), False
    if not os.path.exists(os.path.join(run_dir, "eval.json")):
        ran = True
        env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        with open(run_dir + ".log", "w") as log:
            rc = subprocess.call([sys.executable, os.path.join(ROOT, "train.py"), "--init",
                                  init, "--run-dir", run_dir, "--overwrite"], cwd=ROOT,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            raise SystemExit(f"run failed, see {run_dir}.log")
    seconds = time.time() - t
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        start = next(json.loads(line) for line in f if '"eval/rl-test"' in line)
    ev = json.load(open(os.path.join(run_dir, "eval.json")))
    return {"sft_seed": sft_seed, "sft_sha256": run_arms.sft_fingerprint(sft_seed),
            "rl_test_greedy_sft": start["eval/rl-test"],
            "rl_test_greedy": ev["results"]["rl-test"]["zero-shot"]["mean@1"],
            "rl_test_sampled": ev["sampled"]["rl-test"]["mean@8"],
            "unseen_test_greedy": ev["results"]["unseen-test"]["zero-shot"]["mean@1"],
            "wall_seconds": round(seconds, 1) if ran else None,   # None: an earlier run reused
            "table": ev["results"],
            "sft_report": {k: v for k, v in json.load(open(os.path.join(
                init, "sft_report.json"))).items() if k != "history"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-seeds", type=int, nargs="+", default=list(range(10, 20)))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="quickstart_draws", help="experiments/results/<OUT>.json")
    args = ap.parse_args()
    with ThreadPoolExecutor(args.jobs) as ex:
        runs = list(ex.map(one, args.sft_seeds))
    final = [r["rl_test_greedy"] for r in runs]
    out = {"command": " ".join(["python experiments/quickstart_draws.py", *sys.argv[1:]]),
           "machine": {**run_arms.machine(), "torch_threads_per_job": 1, "jobs": args.jobs},
           "runs": runs,
           "rl_test_greedy": {"min": min(final), "median": statistics.median(final),
                              "max": max(final), "n": len(final)}}
    with open(os.path.join(HERE, "results", f"{args.out}.json"), "w") as f:
        json.dump(out, f, indent=1)
    for r in runs:
        print(f"SFT seed {r['sft_seed']}: rl-test {r['rl_test_greedy_sft']:.3f} -> "
              f"{r['rl_test_greedy']:.3f} greedy, sampled {r['rl_test_sampled']:.3f}")
    print(f"rl-test greedy after 120 steps over {len(final)} SFT draws: "
          f"{min(final):.3f} to {max(final):.3f}, median {statistics.median(final):.3f}")


if __name__ == "__main__":
    main()
