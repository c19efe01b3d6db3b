"""Does a change leave the tiny world's CPU float32 path bit-identical? Run it before and after.

Experiments run on the tiny world's float32 CPU path, so a change meant for the GPU (bf16
autocast, the reference model's dtypes, the KV cache, attention masks, saving dtypes) must not
move a single bit there. This script trains a random tiny-world model (built from a config, as
tests/conftest.py does; no SFT, no download) with train.py for a few steps, with a reward that
has variance (len(text) % 3 == 0, since a random model never earns the real one), periodic and final evaluation on a few problems, and writes every
logged metric (timings aside), every sample, the evaluation and a hash of the final/ and
checkpoint/ weights to one JSON file:

    python experiments/fp32_identity.py --out before.json     # on the old code
    python experiments/fp32_identity.py --out after.json      # on the new code
    python experiments/fp32_identity.py --compare before.json after.json
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = """import os, sys
sys.path.insert(0, sys.argv[1]); os.chdir(sys.argv[1])
import torch; torch.set_num_threads(1)
import train
train.reward = lambda text, gold: float(len(text) % 3 == 0)
train.main(sys.argv[2:])
"""


def weights_hash(d):
    from safetensors.torch import load_file
    h = hashlib.sha256()
    for name in sorted(f for f in os.listdir(d) if f.endswith(".safetensors")):
        sd = load_file(os.path.join(d, name))
        for k in sorted(sd):
            h.update(k.encode() + str(sd[k].dtype).encode() + sd[k].float().numpy().tobytes())
    return h.hexdigest()


def run(out):
    sys.path.insert(0, ROOT)
    import torch
    from transformers import LlamaForCausalLM
    from support import model as M
    from support import rundir
    from support import world as W
    tmp = tempfile.mkdtemp()
    tok = W.tiny_tokenizer(W.TinyWorld())
    torch.manual_seed(0)
    model = LlamaForCausalLM(W.tiny_model_config(tok, hidden=32, layers=2, heads=2))
    M.save_model(model.eval(), tok, f"{tmp}/init")
    with open(f"{tmp}/run.py", "w") as f:
        f.write(RUNNER)
    result = {}
    arms = {"lanpo": [], "grpo-inner2": ["--p-feedback", "0", "--inner-epochs", "2"]}
    for arm, flags in arms.items():
        rd = f"{tmp}/{arm}"
        subprocess.run([sys.executable, f"{tmp}/run.py", ROOT, "--init", f"{tmp}/init",
                        "--run-dir", rd, "--steps", "3", "--problems-per-step", "4",
                        "--group-size", "4", "--eval-every", "2", "--eval-limit", "6",
                        "--ckpt-every", "2", "--lr", "1e-2", "--seed", "3", "--gamma", "0",
                        *flags], check=True, capture_output=True,
                       env=dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1"))
        metrics = [{k: v for k, v in json.loads(line).items()
                    if not rundir.is_timing(k)}
                   for line in open(f"{rd}/metrics.jsonl")]
        result[arm] = {"metrics": metrics,
                       "samples": [json.loads(line) for line in open(f"{rd}/samples.jsonl")],
                       "eval": json.load(open(f"{rd}/eval.json")),
                       "final_weights": weights_hash(f"{rd}/final"),
                       "checkpoint_weights": weights_hash(f"{rd}/checkpoint")}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


def compare(a, b):
    """Every value the two runs share must be equal; a metric that only the newer code logs
    (a new key, e.g. `precision`) is listed, not counted as a difference."""
    A, B = json.load(open(a)), json.load(open(b))
    same = True
    for arm in A:
        for key in A[arm]:
            x, y = A[arm][key], B.get(arm, {}).get(key)
            if key == "metrics" and y is not None and len(x) == len(y):
                new = sorted({k for r in y for k in r} - {k for r in x for k in r})
                y = [{k: v for k, v in r.items() if k not in new} for r in y]
                if new:
                    print(f"{arm:12} metrics only in {b}: {', '.join(new)}")
            ok = x == y
            same &= ok
            print(f"{arm:12} {key:20} {'identical' if ok else 'DIFFERENT'}")
    print("bit-identical" if same else "NOT identical")
    return same


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out")
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare) else 1)
    run(args.out)
