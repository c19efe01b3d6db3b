"""Does a change of layout change what the code computes? Fingerprint runs, before and after.

A move of code (files into a package, functions split or merged, comments rewritten) must not
move a bit of what `sft.py` and `train.py` compute. This script runs both entry points as a user
would (`python sft.py ...`, `python train.py ...`, one torch thread) from a checkout given by
--repo and writes a fingerprint of each run: the sha256 of a short SFT's weights, and for each
training arm every logged metric (timings aside), every sample, the pool, eval.json and the
final weights.

    git worktree add /tmp/before <old commit>
    python sft.py --out /tmp/sft                                   # one SFT model for the arms
    python experiments/identity.py --repo /tmp/before --init /tmp/sft --out before.json
    python experiments/identity.py --repo . --init /tmp/sft --out after.json \
        --resume-from-old /tmp/before                              # old run directories resume
    python experiments/identity.py --compare before.json after.json
    python experiments/identity.py --fingerprint RUN_A RUN_B --out same.json   # two runs alike?

The arms cover every path of the step: GRPO, the paper's LANPO (default), plain and corrected
scoring, the placebo, LoRA, the oracle, the leaky reflection, raw inter-sample attempts and two
inner epochs; `resumed` stops the default arm at step 6 and resumes it to step 12, and with
--resume-from-old the old checkout's 6-step run is resumed by the code under test.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

STEPS = 12
COMMON = ["--steps", str(STEPS), "--problems-per-step", "4", "--group-size", "8",
          "--eval-every", "6", "--eval-limit", "9", "--ckpt-every", "6", "--seed", "3"]
ARMS = {"grpo": ["--p-feedback", "0"],
        "default": [],
        "plain": ["--score-context", "plain"],
        "corrected": ["--score-context", "corrected"],
        "placebo": ["--feedback", "placebo"],
        "placebo-corrected": ["--feedback", "placebo", "--score-context", "corrected"],
        "lora": ["--lora-rank", "4"],
        "oracle": ["--feedback", "oracle", "--score-context", "plain"],
        "leaky": ["--feedback", "intra", "--reflection", "leaky"],
        "raw": ["--feedback", "inter", "--inter-format", "raw"],
        "inner-epochs": ["--inner-epochs", "2", "--aggregation", "token-mean"]}


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(repo, script, args, log):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, script, *args], cwd=repo, env=env, stdout=f,
                           stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"{script} {' '.join(args)} failed in {repo}; see {log}")


def fingerprint(run_dir):
    """What a training run computed: every logged number but the clocks, as hashes."""
    def lines(name, drop=()):
        with open(os.path.join(run_dir, name)) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        rows = [{k: v for k, v in r.items() if not k.startswith("t_") and k not in drop}
                for r in rows]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest(), len(rows)

    metrics, n = lines("metrics.jsonl", drop=("tokens_per_s", "ms_per_decode_step"))
    return {"steps_logged": n, "metrics": metrics, "samples": lines("samples.jsonl")[0],
            "pool": sha(os.path.join(run_dir, "pool.jsonl")),
            "eval": sha(os.path.join(run_dir, "eval.json")),
            "final_weights": sha(os.path.join(run_dir, "final", "model.safetensors"))}


def measure(repo, init, work, old=None):
    out = {}
    sft_dir = os.path.join(work, "sft20")
    run(repo, "sft.py", ["--steps", "20", "--out", sft_dir, "--overwrite"], sft_dir + ".log")
    out["sft-20-steps"] = {"weights": sha(os.path.join(sft_dir, "model.safetensors"))}
    common = ["--init", init, *COMMON]
    for arm, flags in ARMS.items():
        d = os.path.join(work, arm)
        run(repo, "train.py", [*common, *flags, "--run-dir", d, "--overwrite"], d + ".log")
        out[arm] = fingerprint(d)
        print(arm, out[arm], flush=True)
    # a run stopped at step 6 and resumed to step 12 equals the straight run
    d = os.path.join(work, "resumed")
    run(repo, "train.py", [*common, "--steps", "6", "--run-dir", d, "--overwrite"], d + ".log")
    run(repo, "train.py", [*common, "--run-dir", d, "--resume"], d + ".2.log")
    out["resumed"] = fingerprint(d)
    if old:   # a run directory written by the old code, resumed by this one
        d = os.path.join(work, "resumed-old")
        run(old, "train.py", [*common, "--steps", "6", "--run-dir", d, "--overwrite"], d + ".log")
        run(repo, "train.py", [*common, "--run-dir", d, "--resume"], d + ".2.log")
        out["resumed-old"] = fingerprint(d)
    return out


def compare(a, b):
    with open(a) as f:
        before = json.load(f)["runs"]
    with open(b) as f:
        after = json.load(f)["runs"]
    same = True
    for arm, fp in before.items():
        ok = after.get(arm) == fp
        same &= ok
        print(f"{arm:<18} {'identical' if ok else 'DIFFERS'}")
    for arm in ("resumed", "resumed-old"):   # resuming changes nothing
        if arm in after:
            ok = after[arm] == before["default"]
            same &= ok
            print(f"{arm:<18} {'= default' if ok else 'DIFFERS from default'}")
    return same


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--init", help="a tiny-world SFT model (python sft.py --out DIR)")
    ap.add_argument("--out", help="write the fingerprints here")
    ap.add_argument("--resume-from-old", default=None,
                    help="an older checkout whose run directory the code under test resumes")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--fingerprint", nargs="+", metavar="RUN_DIR",
                    help="only fingerprint these finished run directories (with --out); "
                         "says whether they computed the same")
    args = ap.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare) else 1)
    if args.fingerprint:
        runs = {d: fingerprint(d) for d in args.fingerprint}
        same = len({json.dumps(fp, sort_keys=True) for fp in runs.values()}) == 1
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(["python experiments/identity.py", *sys.argv[1:]]),
                       "runs": runs, "identical": same}, f, indent=1)
        print("identical" if same else "DIFFER")
        sys.exit(0 if same else 1)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.repo, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=args.repo, capture_output=True, text=True).stdout.strip())
    runs = measure(os.path.abspath(args.repo), os.path.abspath(args.init), tempfile.mkdtemp(),
                   args.resume_from_old and os.path.abspath(args.resume_from_old))
    with open(args.out, "w") as f:
        json.dump({"commit": commit, "uncommitted_changes": dirty, "threads": 1,
                   "init_weights": sha(os.path.join(args.init, "model.safetensors")),
                   "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
