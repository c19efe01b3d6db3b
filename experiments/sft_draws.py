"""The control arms over every SFT draw, analysed as experiments/ANALYSIS.md declares.

The SFT draw is what varies most between runs, and runs of one SFT model are not independent, so
the unit here is the SFT seed: each seed's value is the mean over its RL seeds (each contrast is
paired by (SFT seed, RL seed) first). For each endpoint (the primary, rl-test sampled mean@8 of
the final model; then greedy mean@1 and the area under the greedy learning curve) and contrast:
- every SFT seed's value, and on how many seeds it is positive / level / negative, where a
  difference of at most one rl-test problem (|d| <= 1/216) is level (the tie band);
- the mean over SFT seeds with a t interval on the seed values (n - 1 degrees of freedom);
- an exact two-sided sign-flip randomization test over SFT seeds (all 2^n sign patterns);
- Holm's correction: over the three primary contrasts on the primary endpoint (the verdicts),
  and over all ten contrasts of each endpoint; a verdict word ("above", "below") only under
  0.05 adjusted, "not shown" otherwise.
Per hard rl family (designed start rate <= 0.15) and arm, the share of runs that had learned it
(>= 0.9 greedy zero-shot) by step 50, 100, 200 (400, 600 for longer runs), censored at the
run's end (never dropped), averaged per SFT seed first so that no seed counts twice.

A table is one machine's: result files whose machines (platform and torch's CPU capability)
differ, or whose SFT models of one seed differ (sha256), are refused unless --across-machines
is given, and then the output says so.

    python experiments/sft_draws.py       # stratum C: --results controls_here --out sft_draws_C
    python experiments/sft_draws.py --results controls --out sft_draws_A
    python experiments/sft_draws.py --results controls_sft5-9 controls_sft3_here --out sft_draws_B
    python experiments/sft_draws.py --results controls controls_sft5-9 --across-machines

Reads experiments/results/<name>.json (experiments/run_arms.py controls ...), writes
experiments/results/sft_draws_C.json (or --out); `python experiments/tables.py draws [OUT]`
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
TIE = 1 / 216   # one rl-test problem: a per-seed difference of at most this is level
ENDPOINTS = ("sampled", "greedy", "auc")   # the first is the primary endpoint
PRIMARY = ("lanpo - grpo", "lanpo - placebo", "lanpo-plain - grpo")   # ANALYSIS.md
ALPHA = 0.05   # family-wise, Holm
# two-sided 97.5% quantiles of Student's t by degrees of freedom (any statistics table)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086}


def machine_of(d):
    """The machine a result file was made on, as far as it recorded it: (platform, torch's CPU
    capability); files made before the capability was recorded have None there."""
    m = d.get("machine") or {}
    return m.get("platform"), m.get("cpu_capability")


def strata_problems(files):
    """Why these result files ({name: results}) are not one machine's table: differing
    machines, or two SFT models (sha256) under one SFT seed. [] when they are."""
    problems, machines, shas = [], {}, {}
    for name, d in files.items():
        machines.setdefault(machine_of(d), name)
        for seed, sha in (d.get("sft_sha256") or {}).items():
            shas.setdefault(seed, set()).add(sha)
        for s in d["summary"].values():
            for r in s["runs"]:   # each machine a run was made on (resumed elsewhere: several)
                for made in r.get("made_on") or []:
                    machines.setdefault(machine_of({"machine": made}), name)
                    shas.setdefault(str(r["sft_seed"]), set()).add(made["sft_sha256"])
    if len(machines) > 1:
        problems.append("made on different machines: " + "; ".join(
            f"{n}: {p}, capability {c or 'not recorded'}" for (p, c), n in machines.items()))
    problems += [f"SFT seed {k}: {len(v)} different SFT models" for k, v in shas.items()
                 if len(v - {None}) > 1]
    return problems


def unrecorded(files):
    """Runs with no record of the machine they were made on, in files whose other runs have one
    (a run whose process was stopped after it finished but before run_arms wrote
    made_on.json): they cannot be checked against the stratum, so each is named. (Files made
    before runs recorded their machine have only the file's record, and no run is listed.)"""
    out = []
    for name, d in files.items():
        runs = [(arm, r) for arm, s in d["summary"].items() for r in s["runs"]]
        if any(r.get("made_on") for _, r in runs):
            out += [f"{name}: {arm} SFT {r['sft_seed']} RL {r['seed']}" for arm, r in runs
                    if not r.get("made_on")]
    return out


def runs_of(names, across_machines=False):
    """{arm: {(sft seed, rl seed): run record}} over the result files; a (seed, seed) pair that
    two files both hold must be the same run (refused otherwise), and the files must be one
    machine's unless across_machines."""
    out, sources = {}, {}
    files = {name: json.load(open(os.path.join(RES, f"{name}.json"))) for name in names}
    problems = strata_problems(files)
    if problems and not across_machines:
        raise SystemExit("not one stratum (see experiments/ANALYSIS.md), refused: "
                         + " | ".join(problems) + ". --across-machines pools them, and says so")
    for name, d in files.items():
        sources[name] = d["command"]
        for arm, s in d["summary"].items():
            for r in s["runs"]:
                key = (r["sft_seed"], r["seed"])
                have = out.setdefault(arm, {}).get(key)
                if have is not None and have["final"] != r["final"]:
                    raise SystemExit(f"{arm} {key}: two different runs in the results")
                out[arm][key] = r
    return out, sources, problems


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


def sign(x, tie=TIE):
    """+1, 0 or -1, where a difference of at most one rl-test problem is level (0). The small
    slack keeps exactly one problem level whatever the float rounding of the difference."""
    return 0 if abs(x) <= tie + 1e-9 else (1 if x > 0 else -1)


def over_seeds(seed_values, tie=TIE):
    """Mean over SFT seeds, its t interval, the signs (with the tie band) and the sign-flip p."""
    v = list(seed_values.values())
    n, mean = len(v), statistics.mean(v)
    half = T975[n - 1] * statistics.stdev(v) / n ** 0.5 if n > 1 else None
    signs = [sign(x, tie) for x in v]
    return {"n_sft_seeds": n, "mean": mean,
            "t95": [mean - half, mean + half] if half is not None else None,
            "positive": signs.count(1), "zero": signs.count(0), "negative": signs.count(-1),
            "sign_flip_p": sign_flip_p(v),
            "by_sft_seed": {str(k): x for k, x in seed_values.items()}}


def holm(pvalues):
    """Holm's step-down adjusted p-values (Holm 1979), {name: p} -> {name: adjusted p}: the
    i-th smallest of m is multiplied by m - i + 1 (i from 1), capped at 1, and kept at least
    as large as the one before it, so the rejections are those of Holm's procedure at any level."""
    out, running = {}, 0.0
    order = sorted(pvalues, key=pvalues.get)
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * pvalues[k]))
        out[k] = running
    return out


def holm_within(pvalues, family):
    """Holm over the declared family although some of its members have no p yet (their runs
    are not made): those count as p = 1, so the family stays the declared size (a smaller one
    would adjust less) and the adjusted p of the others can only be larger than with theirs."""
    return {k: p for k, p in holm({k: 1.0 for k in family} | pvalues).items() if k in pvalues}


def verdict(mean, p_adjusted):
    """The only words a contrast gets: above / below under ALPHA adjusted, else not shown."""
    if p_adjusted >= ALPHA:
        return "not shown"
    return "above" if mean > 0 else "below"


def curve_area(curve, dataset="rl-test"):
    """Area under a run's greedy learning curve {step: {dataset: accuracy}}: the trapezoid
    over the evaluation steps, divided by the last step (1.0: right from step 0). The curve
    ends at the run's last evaluation (censored there); it must start at step 0."""
    pts = sorted((int(s), v[dataset]) for s, v in curve.items() if v.get(dataset) is not None)
    if len(pts) < 2 or pts[0][0] != 0:
        return None
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(pts, pts[1:]))
    return area / pts[-1][0]


def endpoint(r, what):
    """One run's number for an endpoint: "sampled" (primary), "greedy" or "auc"."""
    return curve_area(r["curve"]) if what == "auc" else rl_test_value(r, what)


def learned_by(runs, family, last=200):
    """runs {(sft seed, rl seed): run}: per SFT seed the share of its runs whose family reached
    0.9 greedy by each step up to `last`, the runs' end (censored there: a run that had not
    learned it counts as not learned, never dropped), then the mean over SFT seeds, so a seed
    with two RL seeds weighs as much as one with one."""
    by_seed = {}
    for (ss, _), r in runs.items():
        by_seed.setdefault(ss, []).append(r["first_learned"].get(family))
    return {str(s): statistics.mean(statistics.mean(f is not None and f <= s for f in firsts)
                                    for firsts in by_seed.values())
            for s in BY_STEPS if s <= last} | {"runs": len(runs), "sft_seeds": len(by_seed)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", nargs="+", default=["controls_here"])
    ap.add_argument("--out", default="sft_draws_C", help="experiments/results/<OUT>.json")
    ap.add_argument("--across-machines", action="store_true",
                    help="pool result files of different machines (or SFT models), and say so")
    args = ap.parse_args()
    runs, sources, problems = runs_of(args.results, args.across_machines)
    first = json.load(open(os.path.join(RES, f"{args.results[0]}.json")))
    families = sorted(((f, v["designed_start"]) for f, v in
                       first["summary"]["grpo"]["families"].items()
                       if v["designed_start"] <= HARD), key=lambda fv: fv[1])
    out = {"command": " ".join(["python experiments/sft_draws.py", *sys.argv[1:]]),
           "sources": sources, "pooled_across_machines": problems,
           "runs_without_machine_record": unrecorded(
               {n: json.load(open(os.path.join(RES, f"{n}.json"))) for n in args.results}),
           "analysis": {"primary_endpoint": ENDPOINTS[0], "primary": list(PRIMARY),
                        "tie": TIE, "alpha": ALPHA, "test": "sign-flip, exact, two-sided",
                        "correction": "Holm"},
           "arms": {}, "contrasts": {}, "learned_by": {}}
    for what in ENDPOINTS:
        for arm, by in runs.items():
            seeds = per_seed({k: endpoint(r, what) for k, r in by.items()})
            out["arms"].setdefault(arm, {})[what] = over_seeds(seeds)
        for a, b in CONTRASTS["controls"]:
            if a not in runs or b not in runs:
                continue
            diffs = {k: endpoint(r, what) - endpoint(runs[b][k], what)
                     for k, r in runs[a].items() if k in runs[b]
                     and endpoint(r, what) is not None
                     and endpoint(runs[b][k], what) is not None}
            if diffs:
                out["contrasts"].setdefault(f"{a} - {b}", {})[what] = over_seeds(per_seed(diffs))
        # Holm over the ten of this endpoint; on the primary endpoint also over the primary three
        of = {k: v[what] for k, v in out["contrasts"].items() if what in v}
        raw = {k: c["sign_flip_p"] for k, c in of.items()}
        for k, p in holm_within(raw, [f"{a} - {b}" for a, b in CONTRASTS["controls"]]).items():
            of[k]["holm_all"] = p
            of[k]["verdict"] = verdict(of[k]["mean"], p)
        if what == ENDPOINTS[0]:
            for k, p in holm_within({k: raw[k] for k in PRIMARY if k in raw}, PRIMARY).items():
                of[k]["holm_primary"] = p
                of[k]["verdict"] = verdict(of[k]["mean"], p)
    for arm, by in runs.items():
        out["learned_by"][arm] = {f"{start:.2f} ({f})": learned_by(by, f, first["steps"])
                                  for f, start in families}
    with open(os.path.join(RES, f"{args.out}.json"), "w") as f:
        json.dump(out, f, indent=1)
    if problems:
        print("POOLED ACROSS MACHINES: " + " | ".join(problems))
    if out["runs_without_machine_record"]:
        print("no machine record (not checked against the stratum): "
              + "; ".join(out["runs_without_machine_record"]))
    for k, v in out["contrasts"].items():
        g = v[ENDPOINTS[0]]
        print(f"{k:36} {ENDPOINTS[0]} mean {g['mean']:+.3f} t95 [{g['t95'][0]:+.3f}, "
              f"{g['t95'][1]:+.3f}] signs +{g['positive']} ={g['zero']} -{g['negative']} of "
              f"{g['n_sft_seeds']}, sign-flip p {g['sign_flip_p']:.3f}, Holm "
              f"{g.get('holm_primary', g['holm_all']):.3f}: {g['verdict']}")


if __name__ == "__main__":
    main()
