"""The size axis: does the paper's verdict on the tiny world change as the model grows?

The tiny world keeps its task, its truth and its budget while the model grows (`sft.py --hidden
--layers`; the sizes are `run_arms.SIZES`). Declared before the runs in experiments/ANALYSIS.md
("The size axis"); what this script computes:

    python experiments/sizes.py costs [--repeats 2]   # seconds per SFT step and per RL step
    python experiments/sizes.py sft                   # the SFT models' reports, collected
    python experiments/sizes.py table                 # the contrasts and the mechanism by size

`costs` times, at each size, SFT steps from scratch and RL steps (GRPO and the paper's LANPO)
from the size's SFT model of seed 10, one torch thread, interleaved over sizes and repeats so
that a shared machine's drift falls on every size alike; medians. Writes
experiments/results/size_costs.json.

`table` reads each size's suite (`run_arms.py sizes [--size S] --name sizes_<S>`), the start
rates its SFT models reach (`world_properties_<S>.json`) and the mechanism measured in the runs'
own step (`step_mechanism_<S>.json`), and writes experiments/results/sizes.json and sizes.png:
per size, the three primary contrasts on the primary endpoint (one value per SFT seed, a t
interval, the sign-flip p, Holm over the three), across sizes the trend of each contrast
in log10(parameters) with a permutation p, and the prediction RESULTS.md wrote before the runs,
checked by its declared rule (`prediction`).
"""
import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RES = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import run_arms  # noqa: E402
import sft_draws as D  # noqa: E402
from support import rundir  # noqa: E402
from support.config import SFT_PRESETS  # noqa: E402

BASE = "h128-l3"   # the tiny world's default model: no SFT variant
SFT_STEPS = SFT_PRESETS["tiny"]["steps"]   # the default SFT's length
AXIS_SFT_SEEDS = (10, 11, 12, 13, 14)   # the size axis' SFT draws at every size (ANALYSIS.md)
PERMUTATIONS = 20_000   # random relabellings of the trend test (ANALYSIS.md), seed 0
N_BOOT = 10_000   # bootstrap resamples of the slope's interval, seed 0


def sizes():
    """{size name: (hidden, layers, SFT variant)}, smallest first."""
    return {BASE: (128, 3, ""), **{k: (h, n, k) for k, (h, n, _) in run_arms.SIZES.items()}}


def parameters(hidden, layers):
    """The tiny model's parameter count at this size, from its config (nothing trained)."""
    import torch
    from transformers import LlamaForCausalLM
    from support import world as W
    tok = W.tiny_tokenizer(W.TinyWorld())
    with torch.device("meta"):
        model = LlamaForCausalLM(W.tiny_model_config(tok, hidden, layers))
    return sum(p.numel() for p in model.parameters())


# ---- costs -------------------------------------------------------------------------------

def _run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, capture_output=True, env=env)


def costs(repeats, sft_steps=20, rl_steps=6, sft_seed=10):
    """Seconds per SFT step and per RL step (GRPO, LANPO) at every size; see the docstring."""
    for name, (_, _, variant) in sizes().items():   # before any timing: every size's SFT model
        init = run_arms.sft_dir(sft_seed, variant)
        if not os.path.exists(os.path.join(init, "model.safetensors")):
            how = f"run_arms.py sizes --size {variant}" if variant else \
                f"python sft.py --seed {sft_seed} --out {init}"
            raise SystemExit(f"{init}: no SFT model of size {name} yet ({how} makes it)")
    tmp = tempfile.mkdtemp()
    cells, load = {}, [os.getloadavg()[0]]   # how busy the machine was, before and after
    for rep in range(repeats):
        for name, (h, n, variant) in sizes().items():
            flags = run_arms.size_flags(variant) if variant else []
            _run(["sft.py", *flags, "--steps", str(sft_steps), "--examples", "2000",
                  "--out", f"{tmp}/sft", "--overwrite"])
            with open(f"{tmp}/sft/sft_report.json") as f:
                hist = json.load(f)["history"][-1]
            cells.setdefault(f"{name} sft", []).append(hist["t_train"] / sft_steps)
            init = run_arms.sft_dir(sft_seed, variant)
            for arm, arm_flags in (("grpo", ["--p-feedback", "0"]), ("lanpo", [])):
                _run(["train.py", "--init", init, "--steps", str(rl_steps), "--eval-every", "0",
                      "--no-final-eval", "--run-dir", f"{tmp}/rl", "--overwrite", *arm_flags])
                with open(f"{tmp}/rl/metrics.jsonl") as f:
                    rows = [json.loads(x) for x in f if x.strip()]
                # the first step (warm-up: allocations, the pool's first fill) left out
                per = [sum(v for k, v in r.items() if k.startswith("t_")) for r in rows[1:]]
                cells.setdefault(f"{name} rl {arm}", []).append(statistics.mean(per))
            print(rep, name, {k: round(v[-1], 3) for k, v in cells.items()
                              if k.startswith(name)}, flush=True)
    out = {"command": "python experiments/sizes.py " + " ".join(sys.argv[1:]),
           "machine": {**run_arms.machine(), "torch_threads": 1,
                       "load_average_1min_before_after": load + [os.getloadavg()[0]]},
           "what": f"seconds per step, one torch thread: SFT ({sft_steps} steps from scratch, "
                   f"batch 64), RL ({rl_steps} steps of 8 x 8 rollouts from the size's SFT "
                   f"seed {sft_seed}, the first left out); median of {repeats} interleaved "
                   "repeats",
           "sizes": {name: {"hidden": h, "layers": n, "parameters": parameters(h, n),
                            "sft_steps": run_arms.SIZES[variant][2] if variant else SFT_STEPS,
                            **{k.split(" ", 1)[1]: statistics.median(v)
                               for k, v in cells.items() if k.split(" ", 1)[0] == name}}
                     for name, (h, n, variant) in sizes().items()},
           "raw": cells}
    with open(os.path.join(RES, "size_costs.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


# ---- the table ---------------------------------------------------------------------------

def trend(values_by_size, log_params, n_perm=PERMUTATIONS, seed=0):
    """OLS slope of per-seed values on log10(parameters), and its two-sided permutation p:
    the sizes' labels shuffled over all the values (under "no size effect" they are
    exchangeable; SFT seeds of different sizes are different models, so nothing is paired).
    values_by_size {size: [per-seed values]}, log_params {size: log10 parameters}."""
    xs = [log_params[s] for s, vs in values_by_size.items() for _ in vs]
    ys = [v for vs in values_by_size.values() for v in vs]
    mx = statistics.mean(xs)
    sxx = sum((x - mx) ** 2 for x in xs)

    def slope(y):
        return sum((x - mx) * v for x, v in zip(xs, y)) / sxx
    observed = slope(ys)
    rng, y, hits = random.Random(seed), list(ys), 0
    for _ in range(n_perm):
        rng.shuffle(y)
        hits += abs(slope(y)) >= abs(observed) - 1e-12
    # the slope's 95% interval: SFT seeds resampled with replacement within each size
    # (percentile bootstrap, Efron & Tibshirani 1993); the x values stay as they are
    rng, boots = random.Random(seed), []
    for _ in range(N_BOOT):
        boots.append(slope([v for vs in values_by_size.values()
                            for v in rng.choices(vs, k=len(vs))]))
    boots.sort()
    return {"slope_per_decade": observed, "permutation_p": (hits + 1) / (n_perm + 1),
            "slope_95": [boots[int(0.025 * N_BOOT)], boots[int(0.975 * N_BOOT) - 1]]}


def size_rows(results_of, rl_seeds=None):
    """Per size: the three primary contrasts over its SFT seeds (paired within (SFT seed, RL
    seed), one value per SFT seed) on the primary endpoint, Holm over the three.
    results_of {size: experiments/results name}; rl_seeds: only these RL seeds (the ones every
    size has, ANALYSIS.md)."""
    out = {}
    for size, name in results_of.items():
        runs, _, problems = D.runs_of([name])
        row = {"results": name, "contrasts": {}}
        for c in D.PRIMARY:
            a, b = c.split(" - ")
            diffs = {k: D.endpoint(r, "sampled") - D.endpoint(runs[b][k], "sampled")
                     for k, r in runs.get(a, {}).items()
                     if k in runs.get(b, {}) and (rl_seeds is None or k[1] in rl_seeds)}
            if len(D.per_seed(diffs)) >= 2:
                row["contrasts"][c] = D.over_seeds(D.per_seed(diffs))
        for c, p in D.holm_within({c: v["sign_flip_p"] for c, v in row["contrasts"].items()},
                                  D.PRIMARY).items():
            row["contrasts"][c]["holm"] = p
            row["contrasts"][c]["verdict"] = D.verdict(row["contrasts"][c]["mean"], p)
        row["arms"] = {arm: D.over_seeds(D.per_seed(
            {k: D.endpoint(r, "sampled") for k, r in by.items()
             if rl_seeds is None or k[1] in rl_seeds})) for arm, by in runs.items()}
        out[size] = row
    return out


def _result(size, stem, base_name):
    """experiments/results/<stem>_<size>.json (at the base size: <base_name>.json), or None."""
    path = os.path.join(RES, f"{base_name if size == BASE else f'{stem}_{size}'}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def sft_reports(sft_seeds=AXIS_SFT_SEEDS):
    """What each size's SFT models reported when they were made (runs/tiny/sft-seed<S>[-<size>]/
    sft_report.json; the runs are not committed, this summary is): the last held-out and
    training loss, greedy sft-test and rl-test, the minutes and the step a resume began at.
    Writes experiments/results/sizes_sft.json."""
    out = {}
    for size, (_, _, variant) in sizes().items():
        for k in sft_seeds:
            path = os.path.join(run_arms.sft_dir(k, variant), "sft_report.json")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                r = json.load(f)
            last = r["history"][-1]
            out.setdefault(size, {})[str(k)] = {
                "steps": last["step"], "heldout_loss": last["heldout_loss"],
                "train_loss": last["train_loss"],
                # sft.py's seconds are its last process's: a resumed SFT's are a part
                "minutes": r["seconds"] / 60, "resumed_from_step": r.get("resumed_from_step"),
                "greedy": {s: r["zero_shot_accuracy"][s] for s in ("sft-test", "rl-test")}}
    path = os.path.join(RES, "sizes_sft.json")
    if os.path.exists(path):   # a checkout with fewer models must not shrink the record
        with open(path) as f:
            missing = [f"{s} seed {k}" for s, by in json.load(f)["sizes"].items() for k in by
                       if k not in out.get(s, {})]
        if missing:
            raise SystemExit(f"{path} records SFT models not under runs/ here: "
                             f"{', '.join(missing)}; run this where they all are")
    if not out:
        raise SystemExit("no SFT model of the size axis yet: python experiments/run_arms.py sizes")
    rundir.atomic_write(path, json.dumps(
        {"command": "python experiments/sizes.py sft", "sizes": out}, indent=1))
    return out


def start_rate_models(size, sft_seeds):
    """{SFT seed: world_properties.py's record of that seed's SFT model at this size (k = 32)},
    seeds in order; {} where not measured."""
    d = _result(size, "world_properties", "world_properties_here")
    variant = sizes()[size][2]
    names = {os.path.basename(run_arms.sft_dir(k, variant)): k for k in sft_seeds}
    by_seed = {}
    for m in (d or {}).get("models", []):
        k = names.get(os.path.basename(m["model"].rstrip("/\\")))   # this size's models only
        if k is not None:
            if k in by_seed:
                raise ValueError(f"{size}: SFT seed {k} measured twice in world_properties")
            by_seed[k] = m
    return dict(sorted(by_seed.items()))


def start_rates(size, sft_seeds):
    """The start rates this size's SFT models of these seeds leave: how many (rl family, SFT
    seed) sampled rates are within 0.05 of the design, of how many, and the largest gap; None
    where not measured."""
    models = start_rate_models(size, sft_seeds).values()
    gaps = [abs(f["sampled"] - f["designed"]) for m in models for f in m["rl_families"].values()]
    if not gaps:
        return None
    return {"models": len(models), "within_0.05": sum(g <= 0.05 for g in gaps), "of": len(gaps),
            "largest_gap": max(gaps)}


def mechanism(size, sft_seeds):
    """The mechanism in the runs' own step at this size, over these SFT seeds only (the base
    size was measured on ten): per checkpoint step, plain's zero-shot gain of log pi(y* | x),
    prompt - plain and corrected - plain with the ratio of means, and whether plain's gain is
    shown above 0 (ANALYSIS.md: the ratio is read only then) (step_mechanism[_<size>].json),
    or None where not measured."""
    import step_mechanism
    d = _result(size, "step_mechanism", "step_mechanism")
    if d is None:
        return None
    out = {}
    for step, v in d["steps"].items():
        per_seed = {k: r for k, r in v["per_seed"].items() if int(k) in sft_seeds}
        if len(per_seed) >= 2:
            both = step_mechanism.summarize(per_seed)
            summary = both["own_d_logp"]
            out[step] = {k: summary[k] for k in ("plain", "prompt - plain", "corrected - plain")}
            # the ratio to plain's gain is read only where that gain is shown above 0
            out[step]["ratio_readable"] = summary["plain"]["t95"][0] > 0
            out[step]["n_sft_seeds"] = len(per_seed)
            # reported beside (ANALYSIS.md): the same difference on the right procedure's p
            out[step]["procedure: prompt - plain"] = both["own_d_p_procedure"]["prompt - plain"]
    return out or None


# The prediction RESULTS.md wrote before any run at a larger size, and the rule it is tested
# by (RESULTS.md, "The size axis"; ANALYSIS.md's ceiling): at a size where GRPO ends below the
# ceiling it fails if the paper's algorithm is below GRPO (beyond the tie band) on fewer than
# four of the five SFT seeds, or their mean is above 0, or the ratio of zero-shot gains exceeds
# 0.5 at step 25 or 200 where it is read; across sizes it fails if the slope's interval lies
# above 0. The base size's draws were known when it was written: restated there, not tested.
# Where the text is silent, ANALYSIS.md's addition of 2026-12-07 (written before any size was
# tabulated) says what is decided here: exactly 0.95, not five seeds, steps other than 25 and
# 200, the slope before every size is in or with a size at the ceiling.
CEILING = 0.95
RATIO_LIMIT = 0.5
MECHANISM_STEPS = ("25", "200")
BELOW_AT_LEAST = 4   # of the five SFT seeds
PREDICTION_SEEDS = 5


def prediction(out):
    """{"by_size": {size: {"status", "reasons", "not_read"}}, "across_sizes": {"status",
    "reasons"}}: the prediction checked by its declared rule. status: "holds", "fails",
    "untested" (GRPO at the ceiling, a size without its five SFT seeds) or "known" (the base
    size); not_read: the mechanism's checkpoints where its ratio could not be read (not
    measured, or plain's own gain not shown above 0), so that part of the rule was not tested."""
    by_size = {}
    for size, r in out["sizes"].items():
        c, grpo = r["contrasts"].get("lanpo - grpo"), r["arms"]["grpo"]["mean"]
        if size == BASE:
            by_size[size] = {"status": "known", "reasons": [
                "its draws were known when the prediction was written: restated, not tested"]}
            continue
        if c is None or c["n_sft_seeds"] != PREDICTION_SEEDS:
            by_size[size] = {"status": "untested", "reasons": [
                f"{c['n_sft_seeds'] if c else 0} SFT seeds have both arms, not "
                f"{PREDICTION_SEEDS}"]}
            continue
        if grpo >= CEILING:
            by_size[size] = {"status": "untested", "reasons": [
                f"GRPO at the ceiling ({grpo:.3f}, not below {CEILING})"]}
            continue
        reasons, not_read = [], []
        if c["negative"] < BELOW_AT_LEAST:
            reasons.append(f"below GRPO on {c['negative']} of {c['n_sft_seeds']} SFT seeds "
                           f"(fewer than {BELOW_AT_LEAST})")
        if c["mean"] > 0:
            reasons.append(f"the mean of the paper's algorithm minus GRPO is above 0 "
                           f"({c['mean']:+.3f})")
        for step in MECHANISM_STEPS:
            m = (r.get("mechanism") or {}).get(step)
            if m is None:
                not_read.append(f"step {step}: not measured")
            elif not m["ratio_readable"]:
                not_read.append(f"step {step}: plain's gain not shown above 0")
            elif m["prompt - plain"]["ratio_of_means"] > RATIO_LIMIT:
                reasons.append(f"the ratio of zero-shot gains is "
                               f"{m['prompt - plain']['ratio_of_means']:.2f} at step {step} "
                               f"(above {RATIO_LIMIT})")
        by_size[size] = {"status": "fails" if reasons else "holds", "reasons": reasons,
                         "not_read": not_read}
    return {"by_size": by_size, "across_sizes": across_sizes(out)}


def across_sizes(out):
    """The slope part of the prediction: judged once every size has its five SFT seeds."""
    c = "lanpo - grpo"
    missing = [s for s in sizes() if s not in out["sizes"] or out["sizes"][s]["contrasts"].get(
        c, {}).get("n_sft_seeds") != PREDICTION_SEEDS]
    if missing:
        return {"status": "untested", "reasons": [f"not every size is in ({', '.join(missing)})"]}
    lo, hi = out["trend"][c]["slope_95"]
    if lo <= 0:
        return {"status": "holds", "reasons": []}
    at_ceiling = [s for s, r in out["sizes"].items() if r["arms"]["grpo"]["mean"] >= CEILING]
    if at_ceiling:
        return {"status": "untested", "reasons": [
            f"the slope's interval lies above 0 ([{lo:+.3f}, {hi:+.3f}] per decade), but GRPO "
            f"is at the ceiling at {', '.join(at_ceiling)}, where every contrast is squeezed "
            "towards 0"]}
    return {"status": "fails", "reasons": [
        f"the slope's interval lies above 0 ([{lo:+.3f}, {hi:+.3f}] per decade): the deficit "
        "shrinks with size"]}


def table(rl_seeds):
    have = {s: f"sizes_{s}" for s in sizes() if os.path.exists(os.path.join(RES,
                                                                           f"sizes_{s}.json"))}
    if not have:
        raise SystemExit("no size has results yet: python experiments/run_arms.py sizes ...")
    rows = size_rows(have, rl_seeds)
    params = {s: parameters(h, n) for s, (h, n, _) in sizes().items()}
    for s in sizes():
        if s in rows:
            seeds = [int(k) for k in rows[s]["arms"]["grpo"]["by_sft_seed"]]
            rows[s].update(parameters=params[s], start_rates=start_rates(s, seeds),
                           mechanism=mechanism(s, seeds))
    log_p = {s: math.log10(params[s]) for s in rows}
    trends = {}
    for c in D.PRIMARY:
        by = {s: list(r["contrasts"][c]["by_sft_seed"].values()) for s, r in rows.items()
              if c in r["contrasts"]}
        if len(by) >= 2:
            trends[c] = trend(by, log_p)
    for c, p in D.holm_within({c: t["permutation_p"] for c, t in trends.items()},
                              D.PRIMARY).items():
        trends[c]["holm"] = p
    out = {"command": "python experiments/sizes.py " + " ".join(sys.argv[1:]),
           "rl_seeds": rl_seeds, "sizes": rows, "trend": trends}
    out["prediction"] = prediction(out)
    with open(os.path.join(RES, "sizes.json"), "w") as f:
        json.dump(out, f, indent=1)
    plot(out, os.path.join(RES, "sizes.png"))
    return out


def plot(out, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    rows = out["sizes"]
    for i, c in enumerate(D.PRIMARY):
        pts = [(r["parameters"], r["contrasts"][c]) for r in rows.values() if c in r["contrasts"]]
        x = [p * (1 + 0.04 * (i - 1)) for p, _ in pts]   # side by side, not on top
        ax.errorbar(x, [v["mean"] for _, v in pts],
                    yerr=[[v["mean"] - v["t95"][0] for _, v in pts],
                          [v["t95"][1] - v["mean"] for _, v in pts]],
                    marker="o", capsize=3, label=c)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="parameters", ylabel="rl-test sampled mean@8, difference",
           title="the primary contrasts by model size (t 95%, over SFT seeds)")
    ax.legend(fontsize=8)
    for step in ("25", "200"):   # filled where plain's gain is shown above 0 (read), else hollow
        pts = [(r["parameters"], r["mechanism"][step]) for r in rows.values()
               if r.get("mechanism") and step in r["mechanism"]]
        if pts:
            line, = bx.plot([p for p, _ in pts],
                            [m["prompt - plain"]["ratio_of_means"] for _, m in pts], "-",
                            label=f"step {step}")
            for p, m in pts:
                bx.plot(p, m["prompt - plain"]["ratio_of_means"], "o", color=line.get_color(),
                        fillstyle="full" if m["ratio_readable"] else "none")
    bx.axhline(1, color="grey", lw=0.8)
    bx.axhline(0.5, color="grey", lw=0.8, ls=":")
    bx.set(xscale="log", xlabel="parameters", ylabel="the paper's zero-shot gain / plain's",
           title="the mechanism in the run's own step (hollow: plain's gain not shown > 0)")
    if bx.get_legend_handles_labels()[0]:
        bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("sft", help="collect the SFT models' reports (results/sizes_sft.json)")
    c = sub.add_parser("costs", help="seconds per SFT and RL step at each size")
    c.add_argument("--repeats", type=int, default=2)
    t = sub.add_parser("table", help="the contrasts and the mechanism by size")
    t.add_argument("--rl-seeds", type=int, nargs="+", default=[0],
                   help="the RL seeds every size has (ANALYSIS.md: RL seed 0)")
    args = ap.parse_args()
    if args.what == "sft":
        for size, by in sft_reports().items():
            print(size, {k: round(v["heldout_loss"], 3) for k, v in by.items()})
    elif args.what == "costs":
        out = costs(args.repeats)
        for name, v in out["sizes"].items():
            print(name, {k: v[k] for k in v if k not in ("hidden", "layers")})
        print("machine:", platform.node(), out["machine"]["cpu_capability"])
    else:
        out = table(args.rl_seeds)
        for s, r in out["sizes"].items():
            for c, v in r["contrasts"].items():
                print(f"{s:8} {c:20} {v['mean']:+.3f} [{v['t95'][0]:+.3f}, {v['t95'][1]:+.3f}]"
                      f" {v['positive']}/{v['zero']}/{v['negative']} Holm {v['holm']:.3f}")
        for c, v in out["trend"].items():
            print(f"trend {c}: {v['slope_per_decade']:+.3f} per decade, p "
                  f"{v['permutation_p']:.4f}, Holm {v['holm']:.4f}")
        for where, v in [*out["prediction"]["by_size"].items(),
                         ("across sizes", out["prediction"]["across_sizes"])]:
            print(f"the prediction at {where}: {v['status']}"
                  + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else "")
                  + (f"; the mechanism not read at {'; '.join(v['not_read'])}"
                     if v.get("not_read") else ""))


if __name__ == "__main__":
    main()
