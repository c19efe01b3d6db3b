"""The control arms over every SFT draw we have: one value per SFT seed, and tests honest at few.

The SFT draw is what varies most between runs, and runs of one SFT model are not independent, so
the unit here is the SFT seed: each seed's value is the mean over its RL seeds (each contrast is
paired by (SFT seed, RL seed) first). Per arm and contrast:
- every SFT seed's value, and on how many seeds a contrast is positive / zero / negative;
- the mean over SFT seeds with a t interval on the seed values (n - 1 degrees of freedom);
- an exact sign-flip randomization test over SFT seeds (all 2^n sign patterns of the per-seed
  differences; under "no difference" each is equally likely);
- per hard rl family (designed start rate <= 0.15), the share of runs that reached 0.9 greedy
  zero-shot by step 50, 100, 200 (and 400, 600 for longer runs): a censored time ("not by step 200, evaluations every 25"),
  every run counted, not a median over the runs that got there.

    python experiments/sft_draws.py [--results controls controls_sft5-9]
    python experiments/sft_draws.py --results controls_long --out sft_draws_long

Reads experiments/results/<name>.json (experiments/run_arms.py controls ...), writes
experiments/results/sft_draws.json (or --out); `python experiments/tables.py draws [OUT]`
prints its tables.
"""
import argparse
import itertools
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")
sys.path.insert(0, HERE)
from run_arms import CONTRASTS, rl_test_value  # noqa: E402

BY_STEPS = (50, 100, 200, 400, 600)
HARD = 0.15
# two-sided 97.5% quantiles of Student's t by degrees of freedom (any statistics table)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086}


def runs_of(names):
    """{arm: {(sft seed, rl seed): run record}} over the result files; a (seed, seed) pair that
    two files both hold must be the same run (refused otherwise)."""
    out, sources = {}, {}
    for name in names:
        d = json.load(open(os.path.join(RES, f"{name}.json")))
        sources[name] = d["command"]
        for arm, s in d["summary"].items():
            for r in s["runs"]:
                key = (r["sft_seed"], r["seed"])
                have = out.setdefault(arm, {}).get(key)
                if have is not None and have["final"] != r["final"]:
                    raise SystemExit(f"{arm} {key}: two different runs in the results")
                out[arm][key] = r
    return out, sources


def per_seed(by_run):
    """{sft seed: mean over its RL seeds} of {(sft, rl): value}."""
    seeds = {}
    for (ss, _), v in by_run.items():
        if v is not None:
            seeds.setdefault(ss, []).append(v)
    return {ss: statistics.mean(v) for ss, v in sorted(seeds.items())}


def sign_flip_p(values):
    """Exact two-sided p of the mean under random signs: the share of the 2^n sign patterns whose
    |mean| is at least the observed one (ties count, so p >= 2 / 2^n)."""
    observed = abs(sum(values))
    hits = sum(abs(sum(s * v for s, v in zip(signs, values))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(values)))
    return hits / 2 ** len(values)


def over_seeds(seed_values):
    """Mean over SFT seeds, its t interval, the signs and the sign-flip p."""
    v = list(seed_values.values())
    n, mean = len(v), statistics.mean(v)
    half = T975[n - 1] * statistics.stdev(v) / n ** 0.5 if n > 1 else None
    return {"n_sft_seeds": n, "mean": mean,
            "t95": [mean - half, mean + half] if half is not None else None,
            "positive": sum(x > 1e-12 for x in v), "zero": sum(abs(x) <= 1e-12 for x in v),
            "negative": sum(x < -1e-12 for x in v), "sign_flip_p": sign_flip_p(v),
            "by_sft_seed": {str(k): x for k, x in seed_values.items()}}


def learned_by(runs, family, last=200):
    """Share of runs whose family reached 0.9 greedy by each step up to `last`, the runs' end
    (censored there: a run that had not learned it counts as not learned, never dropped)."""
    firsts = [r["first_learned"].get(family) for r in runs]
    return {str(s): sum(f is not None and f <= s for f in firsts) / len(firsts)
            for s in BY_STEPS if s <= last} | {"runs": len(firsts)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", nargs="+", default=["controls", "controls_sft5-9"])
    ap.add_argument("--out", default="sft_draws", help="experiments/results/<OUT>.json")
    args = ap.parse_args()
    runs, sources = runs_of(args.results)
    first = json.load(open(os.path.join(RES, f"{args.results[0]}.json")))
    families = sorted(((f, v["designed_start"]) for f, v in
                       first["summary"]["grpo"]["families"].items()
                       if v["designed_start"] <= HARD), key=lambda fv: fv[1])
    out = {"command": " ".join(["python experiments/sft_draws.py", *sys.argv[1:]]),
           "sources": sources, "arms": {}, "contrasts": {}, "learned_by": {}}
    for what in ("greedy", "sampled"):
        for arm, by in runs.items():
            seeds = per_seed({k: rl_test_value(r, what) for k, r in by.items()})
            out["arms"].setdefault(arm, {})[what] = over_seeds(seeds)
        for a, b in CONTRASTS["controls"]:
            diffs = {k: rl_test_value(r, what) - rl_test_value(runs[b][k], what)
                     for k, r in runs[a].items() if k in runs[b]
                     and rl_test_value(r, what) is not None
                     and rl_test_value(runs[b][k], what) is not None}
            out["contrasts"].setdefault(f"{a} - {b}", {})[what] = over_seeds(per_seed(diffs))
    for arm, by in runs.items():
        out["learned_by"][arm] = {f"{start:.2f} ({f})": learned_by(list(by.values()), f,
                                                                    first["steps"])
                                  for f, start in families}
    with open(os.path.join(RES, f"{args.out}.json"), "w") as f:
        json.dump(out, f, indent=1)
    for k, v in out["contrasts"].items():
        g = v["greedy"]
        print(f"{k:36} mean {g['mean']:+.3f} t95 [{g['t95'][0]:+.3f}, {g['t95'][1]:+.3f}] "
              f"signs +{g['positive']} ={g['zero']} -{g['negative']} of {g['n_sft_seeds']}, "
              f"sign-flip p {g['sign_flip_p']:.3f}")


if __name__ == "__main__":
    main()
