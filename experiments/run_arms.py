"""Run the tiny-world comparisons: arms x SFT seeds x RL seeds, the same rollout budget each.

Every arm is `python train.py` with the same steps, problems per step, G and hyper-parameters;
only the flags that define the arm differ. Each run starts from the SFT model of its SFT seed,
`runs/tiny/sft-seed<S>` (made by `python sft.py --seed S --out runs/tiny/sft-seed<S>`; the
script makes any that is missing), so every result is reported over SFT draws as well as RL
draws. Runs go to experiments/runs/<suite>/<arm>/sft<S>-rl<R>/ (not committed); a finished run
with the same flags, seeds and steps in any suite is reused, so the reference arms (GRPO,
default LANPO) are shared across suites; a run killed part way (the script stopped, the
machine went away) resumes from its last checkpoint when the script is run again. The summary
goes to experiments/results/<suite>.json and .png.

    python experiments/run_arms.py main --sft-seeds 0 1 2 --seeds 0 1 --jobs 2
    python experiments/run_arms.py gamma --sft-seeds 0 1 --seeds 0
    python experiments/run_arms.py controls --merge controls_long controls_long_sft3-4 \
        --name controls_long5      # one summary of committed results made on other machines

Each job runs with one torch thread; `--jobs 2` uses both cores of a 2-core machine.
Besides the final accuracies, the summary holds, per rl family and arm, the first step at which
the family's greedy zero-shot accuracy reached 0.9 (None: never), beside the start rate the
world designed for it: which starting rates each method can lift, and how fast.
"""
import argparse
import glob
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from support import rundir  # noqa: E402
from support import world as W  # noqa: E402

FLAGS_LOCK = threading.Lock()   # the jobs of one script are threads of one process
LEARNED = 0.9   # a family counts as learned once its greedy zero-shot accuracy reaches this

SUITES = {
    # GRPO vs LANPO, scored under the prompt (the paper) or the plain prompt, with the pool's
    # summaries or with the oracle principle.
    "main": {
        "grpo": ["--p-feedback", "0"],
        "lanpo": [],
        "lanpo-plain": ["--score-context", "plain"],
        "oracle": ["--feedback", "oracle"],
        "oracle-plain": ["--feedback", "oracle", "--score-context", "plain"],
    },
    # The controls a LANPO result has to survive (all with the same budget and flags otherwise):
    # the paper's scoring (prompt) and the two extensions (plain: no importance weight, biased;
    # corrected: a truncated per-token importance weight), each with the real pool and with a
    # placebo context (same blocks and counts, no experience of the run in them).
    "controls": {
        "grpo": ["--p-feedback", "0"],
        "lanpo": [],
        "lanpo-plain": ["--score-context", "plain"],
        "lanpo-corrected": ["--score-context", "corrected"],
        "placebo": ["--feedback", "placebo"],
        "placebo-plain": ["--feedback", "placebo", "--score-context", "plain"],
        "placebo-corrected": ["--feedback", "placebo", "--score-context", "corrected"],
    },
    # GRPO given more exploration, at the same number of rollouts per step (64): a higher
    # sampling temperature (chosen by experiments/temperature_sweep.py) and 16 rollouts for each
    # of 4 problems instead of 8 for 8.
    "exploration": {
        "grpo": ["--p-feedback", "0"],
        "grpo-T1.25": ["--p-feedback", "0", "--temperature", "1.25"],
        "grpo-G16": ["--p-feedback", "0", "--group-size", "16", "--problems-per-step", "4"],
    },
    # Feedback ratio, similarity threshold, feedback type, raw trajectories, leaky reflection.
    # All with the default scoring (prompt): they ablate the paper's method. The default arm
    # (p = 0.75, the preset's gamma, both, summaries) is main's "lanpo" and is shared.
    "p_feedback": {"p=0 (grpo)": ["--p-feedback", "0"], "p=0.5": ["--p-feedback", "0.5"],
                   "p=0.75": [], "p=1.0": ["--p-feedback", "1.0"]},
    # gamma values that retrieve different sets in this world: 0 keeps the top-k whatever they
    # are; 0.2 admits other families that share the person's name; 0.5 (the default) keeps
    # siblings only; 0.9 only siblings that also share the person.
    "gamma": {"gamma=0": ["--gamma", "0"], "gamma=0.2": ["--gamma", "0.2"], "gamma=0.5": [],
              "gamma=0.9": ["--gamma", "0.9"]},
    "feedback": {
        "intra": ["--feedback", "intra"], "inter": ["--feedback", "inter"], "both": [],
        "raw": ["--inter-format", "raw"],
        "leaky": ["--feedback", "intra", "--reflection", "leaky"],
        # same-problem feedback scored under the plain prompt, where memorizing a problem's
        # answer from its earlier attempt would show (train accuracy > test)
        "intra-plain": ["--feedback", "intra", "--score-context", "plain"],
    },
    # No skill seeding: SFT on solutions only (sft.py --skills solve), then the same LANPO run.
    "seeding": {"three skills": [], "solve only": ["--sft-variant", "solve-only"]},
    # The feedback ratios with plain scoring, where experience reaches the zero-shot policy.
    "p_feedback_plain": {"p=0.5 plain": ["--p-feedback", "0.5", "--score-context", "plain"],
                         "p=0.75 plain": ["--score-context", "plain"],
                         "p=1.0 plain": ["--p-feedback", "1.0", "--score-context", "plain"]},
    # The size axis: the arms of the three primary contrasts, at one model size a suite
    # (`--size`, below): does the verdict belong to the method or to a 0.66M-parameter model?
    "sizes": {"grpo": ["--p-feedback", "0"], "lanpo": [],
              "lanpo-plain": ["--score-context", "plain"], "placebo": ["--feedback", "placebo"]},
}
# Model sizes of the size axis, (hidden, layers): the default tiny model is 128 x 3 (0.66M
# parameters); these are 4.5x and 14x larger. Their SFT is the default recipe with Adam's
# usual width rule for the learning rate, lr = 3e-3 x 128 / hidden, for the default 900 steps
# (a pilot of 450 at 384 x 6 left the skills half learned: RESULTS.md, "The size axis").
SIZES = {"h256-l4": (256, 4, 900), "h384-l6": (384, 6, 900)}
def size_flags(size):
    """The sft.py flags of a model size, its length aside."""
    hidden, layers, _ = SIZES[size]
    return ["--hidden", str(hidden), "--layers", str(layers), "--lr", f"{3e-3 * 128 / hidden:.3g}"]


# SFT variants an arm may ask for, and the sft.py flags that make them.
SFT_VARIANTS = {"": [], "solve-only": ["--skills", "solve"],
                **{k: size_flags(k) + ["--steps", str(v[2])] for k, v in SIZES.items()}}


def sft_dir(sft_seed, variant=""):
    return os.path.join(ROOT, "runs", "tiny", f"sft-seed{sft_seed}" + (f"-{variant}" if variant
                                                                        else ""))


def ensure_sft(sft_seed, variant=""):
    """The SFT model of this seed (and variant), made if missing (one torch thread); a killed
    SFT goes on from its checkpoint."""
    out = sft_dir(sft_seed, variant)
    if os.path.exists(os.path.join(out, "sft_report.json")):
        return out
    cmd = [sys.executable, os.path.join(ROOT, "sft.py"), "--seed", str(sft_seed), "--out", out,
           "--overwrite", "--resume", *SFT_VARIANTS[variant]]
    # progress in the log (a line every 30 s: step, seconds per step, time left), since an SFT
    # of a larger size runs for an hour with nothing else to show
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | {"OMP_NUM_THREADS": "1"}
    t = time.time()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".log", "a") as log:   # a resumed SFT's log follows the killed one's
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"sft seed {sft_seed} {variant}: exit {rc} in {time.time() - t:.0f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"sft failed, see {out}.log")
    return out


def sha256_of(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def machine():
    """Where a run is made (host name), and what decides which floating-point kernels it gets:
    the platform, the CPU model and the capability torch dispatches to (AVX2 and AVX512
    kernels differ in the last digits, so the same `sft.py --seed S` makes another model on
    another of these)."""
    import torch
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor()) \
        if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"host": platform.node(), "platform": platform.platform(), "cpu": model,
            "cpus": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


def sft_fingerprint(sft_seed, variant=""):
    """sha256 of the SFT model's weights: two runs pool only if they started from one model
    (None where there is no such file to hash)."""
    path = os.path.join(sft_dir(sft_seed, variant), "model.safetensors")
    return sha256_of(path) if os.path.exists(path) else None


def split_flags(flags):
    """(train.py flags, SFT variant) of an arm."""
    if "--sft-variant" in flags:
        i = flags.index("--sft-variant")
        return flags[:i] + flags[i + 2:], flags[i + 1]
    return flags, ""


def candidate_runs(flags, sft_seed, seed):
    """Finished runs (any suite, any results name) with exactly these flags and seeds, with
    their config: each arm directory records its flags in flags.json."""
    out = []
    for arm_dir in sorted(glob.glob(os.path.join(HERE, "runs", "*", "*"))):
        if not os.path.isdir(arm_dir):   # other experiments keep files there (mechanism/*.json)
            continue
        d = os.path.join(arm_dir, f"sft{sft_seed}-rl{seed}")
        try:
            with open(os.path.join(arm_dir, "flags.json")) as fh:
                same = json.load(fh) == flags
            if same and os.path.exists(os.path.join(d, "eval.json")):
                with open(os.path.join(d, "config.json")) as fh:
                    out.append((d, json.load(fh)))
        except FileNotFoundError:
            continue
    return out


def finished_run(flags, sft_seed, seed, args):
    """A finished run with exactly these flags, seeds, steps and eval interval."""
    for d, cfg in candidate_runs(flags, sft_seed, seed):
        with open(os.path.join(d, "eval.json")) as fh:
            at = json.load(fh)["step"]   # a run being continued holds its shorter run's eval
        if cfg["steps"] == args.steps == at and cfg["eval_every"] == args.eval_every:
            return d
    return None


def shorter_run(flags, sft_seed, seed, args):
    """The longest finished run with these flags and seeds but fewer steps (same eval
    interval): a long run continues it with --resume (identical, on CPU, to a run made long
    from the start: tests/test_train.py), so its first steps are the short run's steps."""
    runs = [(cfg["steps"], d) for d, cfg in candidate_runs(flags, sft_seed, seed)
            if cfg["steps"] < args.steps and cfg["eval_every"] == args.eval_every]
    return max(runs)[1] if runs else None


def killed_run(run_dir, args):
    """This run's own directory when an earlier attempt was killed part way (a checkpoint, the
    same steps and eval interval, no final eval.json): it continues in place with --resume
    instead of starting over from the shorter run."""
    try:
        with open(os.path.join(run_dir, "config.json")) as fh:
            cfg = json.load(fh)
    except FileNotFoundError:
        return None
    same = cfg["steps"] == args.steps and cfg["eval_every"] == args.eval_every
    return run_dir if same and os.path.isdir(os.path.join(run_dir, "checkpoint")) else None


def adopt_init(run_dir, init, fingerprint):
    """A shorter run made from another checkout of this project names its SFT model by that
    checkout's path, and train.py --resume refuses a changed --init. Where every machine record
    of the run (made_on.json) shows the same SFT weights (sha256) as this checkout's model, the
    copy is pointed at this checkout's path: the weights, and so the computation, are the same.
    Otherwise the copy is left as it is, and train.py refuses it, as it should."""
    path = os.path.join(run_dir, "config.json")
    with open(path) as fh:
        cfg = json.load(fh)
    made_path = os.path.join(run_dir, "made_on.json")
    made = json.load(open(made_path)) if os.path.exists(made_path) else []
    if cfg.get("init") in (None, init) or not fingerprint or not made:
        return
    if all(m.get("sft_sha256") == fingerprint for m in made):
        rundir.atomic_write(path, json.dumps({**cfg, "init": init}))


def run_one(suite, arm, flags, sft_seed, seed, args):
    done = finished_run(flags, sft_seed, seed, args)
    if done:
        return done
    arm_dir = os.path.join(HERE, "runs", args.name or suite, arm)
    run_dir = os.path.join(arm_dir, f"sft{sft_seed}-rl{seed}")
    os.makedirs(arm_dir, exist_ok=True)
    # atomically and once: with --jobs 2 another job may be reading it (candidate_runs) or
    # writing it (the same arm, another seed) right now
    with FLAGS_LOCK:
        path = os.path.join(arm_dir, "flags.json")
        try:
            with open(path) as fh:
                same = fh.read() == json.dumps(flags)
        except FileNotFoundError:
            same = False
        if not same:
            rundir.atomic_write(path, json.dumps(flags))
    train_flags, variant = split_flags(flags)
    start = killed_run(run_dir, args) or shorter_run(flags, sft_seed, seed, args)
    if start and start != run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(start, run_dir, ignore=shutil.ignore_patterns("eval.json"))
        adopt_init(run_dir, sft_dir(sft_seed, variant), sft_fingerprint(sft_seed, variant))
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--init", sft_dir(sft_seed, variant),
           "--run-dir", run_dir, "--seed", str(seed), "--steps", str(args.steps),
           "--eval-every", str(args.eval_every),
           *(["--resume"] if start else ["--overwrite"]), *train_flags, *args.extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    t = time.time()
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    with open(run_dir + ".log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc == 0 and os.path.isdir(run_dir):   # where it was made (every machine that worked on it)
        made = {**machine(), "sft_sha256": sft_fingerprint(sft_seed, variant)}
        path = os.path.join(run_dir, "made_on.json")
        before = json.load(open(path)) if os.path.exists(path) else []
        rundir.atomic_write(path, json.dumps(before + [made] if made not in before else before))
    print(f"{args.name or suite}/{arm}/sft{sft_seed}-rl{seed}: exit {rc} in "
          f"{time.time() - t:.0f} s" + (f" (continued from {start})" if start else ""),
          flush=True)
    if rc != 0:
        raise SystemExit(f"run failed, see {run_dir}.log")
    return run_dir


def read_run(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(run_dir, "eval.json")) as f:
        ev_all = json.load(f)
    ev = ev_all["results"]
    steps = [r for r in rows if "reward" in r]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    curve = {r["step"]: {k[5:]: v for k, v in r.items() if k.startswith("eval/")} for r in evals}

    def mean_of(key, rows=steps):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.mean(vals) if vals else None
    if all(r.get("retrieval_hit_rate") is None for r in steps):
        for r in steps:   # no inter-sample retrieval (intra only, oracle): no recall either
            r["retrieval_recall"] = None   # (runs logged before train.py said so logged 0)
    first_learned = {}
    for name in evals[0].get("eval_families", {}):
        hit = [r["step"] for r in evals if r["eval_families"][name] >= LEARNED]
        first_learned[name] = hit[0] if hit else None
    # rollouts and successes per rl family and kind, summed over the run (counted each step)
    successes = {}
    first_plain_success = {}
    for r in steps:
        for fam, v in (r.get("rl_family_successes") or {}).items():
            acc = successes.setdefault(fam, [0, 0, 0, 0])
            for i in range(4):
                acc[i] += v[i]
            if v[0] and fam not in first_plain_success:
                first_plain_success[fam] = r["step"]
    # two feedback-aware and two plain completions of the last step, quoted as they were
    with open(os.path.join(run_dir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    last = [x for x in samples if x["step"] == samples[-1]["step"]] if samples else []
    made_on = os.path.join(run_dir, "made_on.json")
    return {
        "made_on": json.load(open(made_on)) if os.path.exists(made_on) else None,
        "final": {ds: {mode: m["mean@1"] for mode, m in res.items()} for ds, res in ev.items()},
        "sampled": ev_all.get("sampled", {}),
        "family_successes": successes,
        "first_plain_success": first_plain_success,
        "example_samples": last[:4],
        "pool_hit_rate": {ds: res["pool"]["retrieval_hit_rate"] for ds, res in ev.items()
                          if "pool" in res},
        "self_correct_first": {ds: res["self-correct"]["first_accuracy"]
                               for ds, res in ev.items() if "self-correct" in res},
        "curve": curve,
        "families_start": evals[0].get("eval_families", {}),
        "families_final": evals[-1].get("eval_families", {}),
        "first_learned": first_learned,
        "train": {k: mean_of(k) for k in
                  ("reward", "reward_feedback", "reward_plain", "zero_std_frac", "kl", "is_weight",
                   "response_length", "coverage", "retrieval_hit_rate", "retrieval_precision",
                   "retrieval_recall", "summary_correct", "summary_correct_given_right",
                   "train_acc_rl_plain", "train_acc_rl_feedback", "t_generation", "t_update",
                   "t_pool", "t_reward")},
        # training accuracy on the rl families over the last 50 steps, to set beside the final
        # test accuracy on the same families (the leakage signature)
        "train_end": {k: mean_of(k, steps[-50:])
                      for k in ("train_acc_rl_plain", "train_acc_rl_feedback")},
        # the first 50 steps: how much the contexts explore before anything is learned
        "train_start": {k: mean_of(k, steps[:50])
                        for k in ("train_acc_rl_plain", "train_acc_rl_feedback")},
        "zero_std_by_step": [r["zero_std_frac"] for r in steps],
        # seconds of training (all four phases, evaluations excluded) up to each eval step
        "seconds_at": {s: sum(r["t_generation"] + r["t_reward"] + r["t_update"] + r["t_pool"]
                              for r in steps if r["step"] <= int(s)) for s in curve},
    }


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def cluster_bootstrap(by_run, n_boot=10_000, seed=0):
    """95% interval of the mean over runs {(sft seed, rl seed): value}, resampling at both
    levels a user's draw has: SFT seeds with replacement, then RL seeds within each (runs of
    one SFT model are not independent draws). Percentile interval (Efron & Tibshirani 1993)."""
    by_sft = {}
    for (ss, _), v in by_run.items():
        if v is not None:
            by_sft.setdefault(ss, []).append(v)
    if not by_sft:
        return None
    keys, rng, means = sorted(by_sft), random.Random(seed), []
    for _ in range(n_boot):
        vals = []
        for ss in rng.choices(keys, k=len(keys)):
            vals += rng.choices(by_sft[ss], k=len(by_sft[ss]))
        means.append(statistics.mean(vals))
    means.sort()
    flat = [v for vs in by_sft.values() for v in vs]
    return {"mean": statistics.mean(flat), "lo": means[int(0.025 * n_boot)],
            "hi": means[int(0.975 * n_boot) - 1], "n": len(flat), "sft_seeds": len(keys)}


def rl_test_value(r, what):
    """One run's number: greedy zero-shot mean@1 or sampled mean@8, on rl-test."""
    if what == "greedy":
        return r["final"]["rl-test"]["zero-shot"]
    return (r.get("sampled", {}).get("rl-test") or {}).get("mean@8")


# Contrasts reported with their intervals: (arm, minus this arm). Paired by (SFT seed, RL seed):
# both runs start from the same SFT model with the same seed.
CONTRASTS = {
    "controls": [("lanpo", "grpo"), ("lanpo", "placebo"), ("placebo", "grpo"),
                 ("lanpo-plain", "grpo"), ("lanpo-plain", "placebo-plain"),
                 ("placebo-plain", "grpo"),
                 ("lanpo-corrected", "grpo"), ("lanpo-corrected", "placebo-corrected"),
                 ("placebo-corrected", "grpo"), ("lanpo-plain", "lanpo-corrected")],
    "exploration": [("grpo-T1.25", "grpo"), ("grpo-G16", "grpo")],
}


def contrasts(suite, runs):
    out = {}
    for a, b in CONTRASTS.get(suite, []):
        if a not in runs or b not in runs:
            continue
        ra = {(ss, rs): r for ss, rs, r in runs[a]}
        rb = {(ss, rs): r for ss, rs, r in runs[b]}
        both = sorted(set(ra) & set(rb))
        out[f"{a} - {b}"] = {
            what: cluster_bootstrap({k: None if rl_test_value(ra[k], what) is None else
                                     rl_test_value(ra[k], what) - rl_test_value(rb[k], what)
                                     for k in both})
            for what in ("greedy", "sampled")}
    return out


def summarize(runs, sft_seeds):
    """runs[arm] = [(sft seed, rl seed, result), ...] -> the summary per arm."""
    world = W.TinyWorld()
    out = {}
    for arm, items in runs.items():
        per_run = [r for _, _, r in items]
        finals = [r["final"] for r in per_run]
        s = {"final": {}, "final_by_sft_seed": {}, "train": {}, "families": {}}
        for ds in finals[0]:
            for mode in finals[0][ds]:
                key = f"{ds} / {mode}"
                s["final"][key] = mean_std([f[ds][mode] for f in finals])
                s["final_by_sft_seed"][key] = {
                    str(k): mean_std([r["final"][ds][mode] for ss, _, r in items if ss == k])
                    for k in sft_seeds}
        for k in per_run[0]["train"]:
            s["train"][k] = mean_std([r["train"][k] for r in per_run])
        s["train_end"] = {k: mean_std([r["train_end"][k] for r in per_run])
                          for k in ("train_acc_rl_plain", "train_acc_rl_feedback")}
        s["train_start"] = {k: mean_std([r["train_start"][k] for r in per_run])
                            for k in ("train_acc_rl_plain", "train_acc_rl_feedback")}
        s["ci95"] = {what: cluster_bootstrap({(ss, rs): rl_test_value(r, what)
                                              for ss, rs, r in items})
                     for what in ("greedy", "sampled")}
        s["pool_hit_rate"] = {ds: mean_std([r["pool_hit_rate"].get(ds) for r in per_run])
                              for ds in per_run[0]["pool_hit_rate"]}
        for f in world.families_of("rl"):
            firsts = [r["first_learned"].get(f.name) for r in per_run]
            s["families"][f.name] = {
                "designed_start": f.start_rate,
                "start_greedy": mean_std([r["families_start"].get(f.name) for r in per_run]),
                "final_greedy": mean_std([r["families_final"].get(f.name) for r in per_run]),
                "first_step_at_0.9": firsts,
                "learned_in": sum(x is not None for x in firsts), "runs": len(firsts),
                # sampled mean@8 of the final model on the family's test problems
                "final_sampled": mean_std([((r.get("sampled", {}).get("rl-test") or {})
                                            .get("families") or {}).get(f.name)
                                           for r in per_run]),
                # training rollouts of the family over the whole run, summed over runs:
                # [right plain, plain, right feedback-aware, feedback-aware]
                "train_successes": [sum(r["family_successes"].get(f.name, [0] * 4)[i]
                                        for r in per_run) for i in range(4)],
                "runs_with_a_plain_success": sum(f.name in r["first_plain_success"]
                                                 for r in per_run),
                "first_plain_success": [r["first_plain_success"].get(f.name) for r in per_run]}
        steps = sorted(per_run[0]["curve"], key=int)
        s["curve_steps"] = [int(x) for x in steps]
        s["curve"] = {ds: [mean_std([r["curve"][x].get(ds) for r in per_run]) for x in steps]
                      for ds in per_run[0]["curve"][steps[0]]}
        s["curve_seconds"] = [statistics.mean(r["seconds_at"][x] for r in per_run) for x in steps]
        s["runs"] = [{"sft_seed": ss, "seed": rs, **r} for ss, rs, r in items]
        out[arm] = s
    return out


def merge(names, suite):
    """The runs of several committed results of one suite (same steps and evaluation interval,
    different (SFT seed, RL seed) pairs), as runs[arm] = [(sft seed, rl seed, result)], and
    what made each: the runs themselves may be on other machines, their records are in the
    JSON. A pair that two files both hold must be the same run."""
    runs, made, shape = {}, [], None
    for name in names:
        with open(os.path.join(HERE, "results", f"{name}.json")) as f:
            d = json.load(f)
        if d["suite"] != suite:
            raise SystemExit(f"{name} is a {d['suite']} result, not {suite}")
        if shape not in (None, (d["steps"], d["eval_every"])):
            raise SystemExit(f"{name}: {d['steps']} steps evaluated every {d['eval_every']}, "
                             f"not {shape[0]} every {shape[1]} like the others")
        shape = (d["steps"], d["eval_every"])
        made.append({k: d.get(k) for k in ("command", "commit", "machine")})
        for arm, s in d["summary"].items():
            have = {(ss, rs): r for ss, rs, r in runs.get(arm, [])}
            for r in s["runs"]:
                key, rec = (r["sft_seed"], r["seed"]), {k: v for k, v in r.items()
                                                        if k not in ("sft_seed", "seed")}
                if key in have and have[key]["final"] != rec["final"]:
                    raise SystemExit(f"{arm} {key}: two different runs in {', '.join(names)}")
                if key not in have:
                    runs.setdefault(arm, []).append((*key, rec))
    for items in runs.values():
        items.sort(key=lambda x: x[:2])
    return runs, made, shape


def plot(suite, summary, steps, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    datasets = list(next(iter(summary.values()))["curve"])
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = list(axes.flat)
    for ax, ds in zip(axes, datasets):
        for arm, s in summary.items():
            m = [c["mean"] for c in s["curve"][ds]]
            sd = [c["std"] for c in s["curve"][ds]]
            ax.plot(s["curve_steps"], m, label=arm, marker=".")
            ax.fill_between(s["curve_steps"], [a - b for a, b in zip(m, sd)],
                            [a + b for a, b in zip(m, sd)], alpha=0.15)
        ax.set_title(f"zero-shot accuracy, {ds}")
        ax.set_xlabel("RL step")
        ax.set_ylim(0, 1)
    ax = axes[3]   # equal wall-clock: the same curve against seconds of training
    for arm, s in summary.items():
        ax.plot(s["curve_seconds"], [c["mean"] for c in s["curve"][datasets[0]]], label=arm,
                marker=".")
    ax.set_title(f"{datasets[0]} against training seconds")
    ax.set_xlabel("seconds (generation + reward + update + pool)")
    ax.set_ylim(0, 1)
    ax = axes[4]
    for arm, s in summary.items():
        per_run = [r["zero_std_by_step"] for r in s["runs"]]
        k, m = 10, min(len(z) for z in per_run)
        avg = [statistics.mean(z[i] for z in per_run) for i in range(m)]
        ax.plot(range(k, m + 1), [statistics.mean(avg[i - k:i]) for i in range(k, m + 1)],
                label=arm)
    ax.set_title("zero-variance group fraction (10-step mean)")
    ax.set_xlabel("RL step")
    ax = axes[5]   # which start rates each arm lifts: first step at 0.9, per family and run
    width = 0.008
    for j, (arm, s) in enumerate(summary.items()):
        xs, ys = [], []
        for fam in s["families"].values():
            for first in fam["first_step_at_0.9"]:
                xs.append(fam["designed_start"] + (j - (len(summary) - 1) / 2) * width)
                ys.append(first if first is not None else steps * 1.15)
        ax.scatter(xs, ys, s=18, label=arm, alpha=0.7)
    ax.axhline(steps * 1.07, color="grey", lw=0.5)
    ax.text(-0.02, steps * 1.19, "never (within the run)", fontsize=8, va="bottom")
    ax.set_title(f"first step with a family at >= {LEARNED} zero-shot")
    ax.set_xlabel("designed start rate of the rl family (sampled, SFT model)")
    ax.set_ylabel("RL step")
    ax.set_ylim(0, steps * 1.25)
    axes[0].legend(fontsize=8)
    for ax in axes[len(datasets):3]:
        ax.set_visible(False)
    fig.suptitle(f"tiny world, suite '{suite}' (mean +- std over SFT seeds x RL seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", choices=SUITES)
    ap.add_argument("--sft-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="RL seeds")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arms", nargs="*", default=None, help="only these arms")
    ap.add_argument("--size", choices=SIZES, default=None,
                    help="every arm from the SFT models of this model size (the size axis); "
                         "default: the tiny world's 128 x 3")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="flags passed to every train.py run")
    ap.add_argument("--name", default=None,
                    help="results file name (default: the suite's); e.g. controls_long")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the figure from the committed results/<suite>.json")
    ap.add_argument("--merge", nargs="+", default=None, metavar="RESULTS",
                    help="run nothing: one summary (--name) of these committed results")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: summarize the runs of this suite that have finished "
                         "(a partial result, marked so; the runs go on when run again)")
    args = ap.parse_args()
    if args.merge:
        if not args.name:
            raise SystemExit("--merge needs --name, the merged results' name")
        runs, made, (steps, eval_every) = merge(args.merge, args.suite)
        sft_seeds = sorted({ss for items in runs.values() for ss, _, _ in items})
        summary = summarize(runs, sft_seeds)
        out = {"command": "python experiments/run_arms.py " + " ".join(sys.argv[1:]),
               "suite": args.suite, "merged_from": made, "sft_seeds": sft_seeds,
               "seeds": sorted({rs for items in runs.values() for _, rs, _ in items}),
               "steps": steps, "eval_every": eval_every,
               "contrasts": contrasts(args.suite, runs), "summary": summary}
        with open(os.path.join(HERE, "results", f"{args.name}.json"), "w") as f:
            json.dump(out, f, indent=1)
        plot(args.name, summary, steps, os.path.join(HERE, "results", f"{args.name}.png"))
        return

    if args.replot:
        with open(os.path.join(HERE, "results", f"{args.suite}.json")) as f:
            d = json.load(f)
        plot(args.suite, d["summary"], d["steps"],
             os.path.join(HERE, "results", f"{args.suite}.png"))
        return
    arms = {a: f + (["--sft-variant", args.size] if args.size else [])
            for a, f in SUITES[args.suite].items() if not args.arms or a in args.arms}
    variants = {split_flags(f)[1] for f in arms.values()}
    # RL seed first, then SFT seed, then arm in the suite's order: a suite stopped part way
    # holds whole SFT draws of its first RL seed, the most SFT draws for the time spent
    jobs = [(arm, flags, sft_seed, seed) for seed in args.seeds for sft_seed in args.sft_seeds
            for arm, flags in arms.items()]
    if args.collect:
        done = [(j, finished_run(j[1], j[2], j[3], args)) for j in jobs]
        jobs, dirs = [j for j, d in done if d], [d for _, d in done if d]
        if not jobs:
            raise SystemExit("--collect: no run of these has finished yet")
    else:
        with ThreadPoolExecutor(args.jobs) as ex:
            list(ex.map(lambda sv: ensure_sft(*sv),
                        [(s, v) for s in args.sft_seeds for v in variants]))
        with ThreadPoolExecutor(args.jobs) as ex:
            dirs = list(ex.map(lambda j: run_one(args.suite, *j, args), jobs))
    runs = {}
    for (arm, _, sft_seed, seed), d in sorted(zip(jobs, dirs), key=lambda jd: jd[0][2:]):
        runs.setdefault(arm, []).append((sft_seed, seed, read_run(d)))
    summary = summarize(runs, sorted({ss for items in runs.values() for ss, _, _ in items}))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = {"command": "python experiments/run_arms.py " + " ".join(sys.argv[1:]),
           "suite": args.suite, "arms": arms, "sft_seeds": args.sft_seeds, "seeds": args.seeds,
           "steps": args.steps, "eval_every": args.eval_every, "extra": args.extra,
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip(),
           "contrasts": contrasts(args.suite, runs),
           "machine": {**machine(), "torch_threads_per_job": 1, "jobs": args.jobs},
           "sft_sha256": {str(s): sft_fingerprint(s, args.size or "") for s in args.sft_seeds},
           **({"size": {"name": args.size, "hidden": SIZES[args.size][0],
                        "layers": SIZES[args.size][1]}} if args.size else {}),
           **({"partial": {arm: len(items) for arm, items in runs.items()}} if args.collect
              else {}),
           "summary": summary}
    name = args.name or args.suite
    with open(os.path.join(HERE, "results", f"{name}.json"), "w") as f:
        json.dump(out, f, indent=1)
    plot(name, summary, args.steps, os.path.join(HERE, "results", f"{name}.png"))
    print(f"\n{'arm':<14}" + "".join(f"{k:>30}" for k in next(iter(summary.values()))["final"]
                                     if "zero-shot" in k))
    for arm, s in summary.items():
        cells = [f"{v['mean']:.3f} +- {v['std']:.3f}" for k, v in s["final"].items()
                 if "zero-shot" in k]
        print(f"{arm:<14}" + "".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
