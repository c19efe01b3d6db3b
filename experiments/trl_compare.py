"""This project's GRPO step against TRL's GRPOTrainer, side by side on one machine.

The same tiny-world SFT model, the same prompts (8 rl-train problems per step, G = 8), 32 new
tokens at most, temperature 1 with no top-k or top-p, beta = 0.04, lr 1e-4, one update per
batch, float32 on the CPU. This project runs `train.py --p-feedback 0` (GRPO through the
LANPO code); TRL runs GRPOTrainer with a reward function that calls this project's reward().
A step's seconds: for this project the sum of its phases in metrics.jsonl (sampling, reward,
update; the pool is empty under GRPO), for TRL the time between its callbacks' step begin and
step end (generation, reward, update). Steps 2 on are kept (the first warms caches up); a cell's
number is the median over its repeats of each run's median step.

Each cell is one pair of fresh processes (this project, then TRL), in the same order every
time, and the cells are interleaved: for each repeat, idle then busy (a second process keeps
one core busy, as a browser tab does), each of: both at one thread, both at two, both at
their defaults (no --threads and no OMP_NUM_THREADS for either).

TRL is an optional install for this script alone: pass the python of an environment that has
it (`pip install trl==1.16.0` beside this project's requirements); nothing else here imports it.

    python experiments/trl_compare.py --init runs/tiny/sft --trl-python /path/to/trl-env/bin/python

Writes experiments/results/trl_compare.json.
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
PROBLEMS, G, TOKENS, BETA, LR = 8, 8, 32, 0.04, 1e-4
THREADS = {"1 each": "1", "2 each": "2", "defaults": None}


def clean_env():
    """The environment a user's shell would give both: no thread settings of ours."""
    return {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}


def ours(init, steps, threads, tmp):
    cmd = [sys.executable, "train.py", "--init", init, "--p-feedback", "0", "--steps",
           str(steps), "--problems-per-step", str(PROBLEMS), "--group-size", str(G),
           "--max-new-tokens", str(TOKENS), "--beta", str(BETA), "--lr", str(LR),
           "--eval-every", "0", "--no-final-eval", "--run-dir", f"{tmp}/ours", "--overwrite"]
    if threads:
        cmd += ["--threads", threads]
    out = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"train.py failed:\n{out.stderr[-2000:]}")
    chosen = next((line for line in out.stdout.splitlines() + out.stderr.splitlines()
                   if "threads:" in line), "")
    with open(f"{tmp}/ours/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps_s = [sum(v for k, v in r.items() if k.startswith("t_")) for r in rows if r["step"]]
    return steps_s, chosen.strip()


def trl(python, init, steps, threads, tmp):
    cmd = [python, os.path.abspath(__file__), "--worker", "--init", init, "--steps", str(steps),
           "--out", f"{tmp}/trl"]
    if threads:
        cmd += ["--threads", threads]
    out = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the TRL worker failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["steps"], f"threads: {result['threads']} (torch's default)" \
        if not threads else f"threads: {threads}"


def worker(args):
    """Run by the TRL environment's python: TRL's GRPO on the same model and prompts."""
    sys.path.insert(0, ROOT)
    import torch
    if args.threads:
        torch.set_num_threads(int(args.threads))
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import prompts
    from reward import reward
    from support import world as W
    world = W.TinyWorld()
    problems = world.problems("rl", "train")
    rows = [{"prompt": prompts.solve_prompt(p["question"]), "answer": p["answer"]}
            for p in problems]

    def score(completions, answer, **_):
        return [float(reward(c, a)) for c, a in zip(completions, answer)]

    seconds = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            seconds.append(time.perf_counter() - self.start)

    cfg = GRPOConfig(output_dir=args.out, per_device_train_batch_size=PROBLEMS * G,
                     num_generations=G, max_completion_length=TOKENS, beta=BETA,
                     temperature=1.0, top_p=1.0, top_k=0, learning_rate=LR,
                     lr_scheduler_type="constant", max_steps=args.steps, logging_steps=1,
                     use_cpu=True, bf16=False, report_to=[], save_strategy="no", seed=0,
                     disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(args.init)
    tok = AutoTokenizer.from_pretrained(args.init)
    trainer = GRPOTrainer(model=model, reward_funcs=score, args=cfg,
                          train_dataset=Dataset.from_list(rows), processing_class=tok,
                          callbacks=[Clock()])
    trainer.train()
    print(json.dumps({"steps": seconds, "threads": torch.get_num_threads()}))


def busy():
    """Another process that keeps one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", default="runs/tiny/sft", help="a tiny-world SFT model")
    ap.add_argument("--trl-python", help="the python of an environment with trl installed")
    ap.add_argument("--steps", type=int, default=8, help="steps per run (the first is dropped)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loads", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                  "trl_compare.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.trl_python:
        ap.error("--trl-python is needed: the python of an environment with trl installed")
    if args.steps < 3:
        ap.error("--steps must be at least 3 (the first step is dropped)")
    init = os.path.abspath(args.init)
    tmp = tempfile.mkdtemp()
    runs, chosen = {}, {}
    for rep in range(args.repeats):
        for load in args.loads:
            for name, threads in THREADS.items():
                hog = busy() if load == "busy" else None
                try:
                    for impl, fn in (("ours", lambda: ours(init, args.steps, threads, tmp)),
                                     ("trl", lambda: trl(args.trl_python, init, args.steps,
                                                         threads, tmp))):
                        steps, said = fn()
                        runs.setdefault(f"{load} | {name} | {impl}", []).append(steps[1:])
                        chosen[f"{load} | {name} | {impl}"] = said
                finally:
                    if hog:
                        hog.kill()
                o, t = (statistics.median(runs[f"{load} | {name} | {i}"][-1])
                        for i in ("ours", "trl"))
                print(f"repeat {rep}, {load}, {name}: ours {o:.3f} s, TRL {t:.3f} s "
                      f"({o / t:.2f}x)", flush=True)
    cells = {}
    for load in args.loads:
        for name in THREADS:
            per_run = {i: [statistics.median(s) for s in runs[f"{load} | {name} | {i}"]]
                       for i in ("ours", "trl")}
            o, t = (statistics.median(per_run[i]) for i in ("ours", "trl"))
            cells[f"{load} | {name}"] = {
                "ours": round(o, 4), "trl": round(t, 4), "ratio": round(o / t, 3),
                "ours_runs": [round(x, 4) for x in per_run["ours"]],
                "trl_runs": [round(x, 4) for x in per_run["trl"]],
                "ratio_runs": [round(a / b, 3) for a, b in zip(per_run["ours"],
                                                               per_run["trl"])],
                "threads_ours": chosen[f"{load} | {name} | ours"],
                "threads_trl": chosen[f"{load} | {name} | trl"]}
            c = cells[f"{load} | {name}"]
            print(f"{load:5} {name:9} ours {o:.3f}  TRL {t:.3f}  ratio {c['ratio']:.2f} "
                  f"(runs {min(c['ratio_runs']):.2f}-{max(c['ratio_runs']):.2f}); "
                  f"{c['threads_ours']} | {c['threads_trl']}")
    trl_version = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
    out = {"command": "python experiments/trl_compare.py " + " ".join(
               a for a in sys.argv[1:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
           "trl": trl_version,
           "what": f"median seconds per GRPO step (steps 2-{args.steps}; {PROBLEMS} problems x "
                   f"G = {G}, {TOKENS} new tokens, beta {BETA}), median over {args.repeats} "
                   "interleaved repeats; ratio = this project / TRL",
           "cells": cells, "raw": runs}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
