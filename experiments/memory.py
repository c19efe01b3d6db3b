"""Peak memory (resident set size) of the main commands on the CPU, one subprocess each.

    python experiments/memory.py

Runs short versions of `sft.py` and `train.py` for the tiny and smol presets and records each
child's peak RSS (getrusage). GPU memory is not measured here (no GPU was available).
Writes experiments/results/memory.json.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb(cmd):
    """Run one command in a fresh process and return (its peak RSS in MB, seconds)."""
    script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t = time.time()
    out = subprocess.run([sys.executable, "-c", script, *cmd], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024, time.time() - t


def main():
    tmp = tempfile.mkdtemp()
    py = sys.executable
    smol_dir = subprocess.run([py, "-c", "from support import model; print(model.smol_gguf()[0])"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
    smol_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    commands = {
        "tiny: sft.py (200 of the 900 steps, batch 64)":
            [py, "sft.py", "--out", f"{tmp}/sft", "--steps", "200"],
        "tiny: train.py (20 steps, 8 x 8 rollouts, KL on)":
            [py, "train.py", "--init", f"{tmp}/sft", "--run-dir", f"{tmp}/rl", "--steps", "20",
             "--no-final-eval", "--eval-every", "0"],
        "smol: train.py (1 step, 2 x 4 rollouts of 128 tokens, KL on)":
            [py, "train.py", "--preset", "smol", "--init", smol_dir, "--gguf-file", smol_file,
             "--run-dir", f"{tmp}/smol", "--steps", "1", "--max-new-tokens", "128",
             "--no-final-eval"],
    }
    results = {}
    for name, cmd in commands.items():
        mb, sec = peak_rss_mb(cmd)
        results[name] = {"peak_rss_mb": round(mb), "seconds": round(sec)}
        print(f"{name:<65} {mb:8.0f} MB  {sec:6.0f} s", flush=True)
    out = {"command": "python experiments/memory.py",
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "results": results}
    os.makedirs(os.path.join(ROOT, "experiments", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "experiments", "results", "memory.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
