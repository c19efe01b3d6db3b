"""Markdown tables of the committed results (experiments/results/*.json), for RESULTS.md and
the README's result paragraph (tests/test_tables.py ties the two).

    python experiments/tables.py [SUITE ...]       # RESULTS.md's tables of each suite
    python experiments/tables.py headline          # the headline tables (controls, long runs)
    python experiments/tables.py draws [NAME]      # every SFT draw (experiments/sft_draws.py)
    python experiments/tables.py draws LONG SHORT  # ... and the same draws at both lengths
    python experiments/tables.py verdicts          # the README's table, one row per machine
"""
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")


def ms(v, digits=3):
    return "-" if v is None else f"{v['mean']:.{digits}f} +- {v['std']:.{digits}f}"


def load(name):
    path = os.path.join(RES, f"{name}.json")
    return json.load(open(path)) if os.path.exists(path) else None


def suite_table(name):
    d = load(name)
    if d is None:
        return f"(no results for {name} yet)\n"
    cols = [("rl-test / zero-shot", "rl-test zero-shot"), ("rl-test / pool", "rl-test pool"),
            ("rl-test / self-correct", "rl-test self-correct"),
            ("sft-test / zero-shot", "sft-test zero-shot"),
            ("unseen-test / zero-shot", "unseen-test zero-shot")]
    train_cols = [("reward_feedback", "train reward, feedback"),
                  ("reward_plain", "train reward, plain"), ("zero_std_frac", "zero-std groups"),
                  ("retrieval_precision", "retrieval precision"),
                  ("retrieval_recall", "retrieval recall"),
                  ("summary_correct_given_right", "summary correct*"),
                  ("train_acc_rl_plain", "rl train acc, plain (last 50)"),
                  ("train_acc_rl_feedback", "rl train acc, feedback (last 50)")]
    head = "| arm | " + " | ".join(c[1] for c in cols + train_cols) + " |"
    lines = [f"`{d['command']}` (SFT seeds {d['sft_seeds']} x RL seeds {d['seeds']}, "
             f"{d['steps']} steps)", "", head,
             "|" + " --- |" * (len(cols) + len(train_cols) + 1)]
    for arm, s in d["summary"].items():
        cells = [ms(s["final"].get(k)) for k, _ in cols] + \
                [ms(s["train_end"].get(k) if "last 50" in label else s["train"].get(k), 2)
                 for k, label in train_cols]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "rl-test zero-shot per SFT seed (mean over RL seeds):", "",
              "| arm | " + " | ".join(f"SFT seed {k}" for k in d["sft_seeds"]) + " |",
              "|" + " --- |" * (len(d["sft_seeds"]) + 1)]
    for arm, s in d["summary"].items():
        per = s["final_by_sft_seed"]["rl-test / zero-shot"]
        lines.append(f"| {arm} | " + " | ".join(ms(per[str(k)]) for k in d["sft_seeds"]) + " |")
    return "\n".join(lines) + "\n"


def arms_and_families(name):
    """(results, arms, rl families sorted by designed start rate), or (None, ...) if absent."""
    d = load(name)
    if d is None:
        return None, [], []
    arms = list(d["summary"])
    return d, arms, sorted(d["summary"][arms[0]]["families"].items(),
                           key=lambda kv: kv[1]["designed_start"])


def families_table(name):
    """Per rl family (by designed start rate) and arm: in how many runs the family reached
    0.9 greedy zero-shot accuracy, and the median first step among those."""
    d, arms, fams = arms_and_families(name)
    if d is None:
        return ""
    lines = ["| designed start rate | " + " | ".join(arms) + " |",
             "|" + " --- |" * (len(arms) + 1)]
    for name_, f in fams:
        cells = []
        for arm in arms:
            g = d["summary"][arm]["families"][name_]
            step = learned_step(g)
            cells.append(f"{g['learned_in']}/{g['runs']}" +
                         (f", step {step:g}" if step is not None else ""))
        lines.append(f"| {f['designed_start']:.2f} ({name_}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def learned_step(g):
    """Median first step at which a family reached 0.9 among the runs that got there (None if
    none did); g: one arm's entry of summary[arm]["families"]."""
    hit = [x for x in g["first_step_at_0.9"] if x is not None]
    return statistics.median(hit) if hit else None


def ci(v, digits=3, signed=False):
    """"mean [lo, hi]" of a cluster-bootstrap interval (run_arms.cluster_bootstrap)."""
    if v is None:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(v['mean'])} [{f.format(v['lo'])}, {f.format(v['hi'])}]"


def controls_table(name):
    """Per arm: rl-test greedy mean@1 and sampled mean@8 with 95% intervals, the other test
    sets, and how often the rl families' rollouts succeeded in the first 50 steps."""
    d = load(name)
    if d is None:
        return f"(no results for {name} yet)\n"
    made = "; ".join(f"`{m['command']}` at {m['commit']}" for m in d["merged_from"]) \
        if "merged_from" in d else f"commit {d.get('commit', '?')}"
    rl = {}
    for r in next(iter(d["summary"].values()))["runs"]:
        rl.setdefault(r["sft_seed"], []).append(r["seed"])
    seeds = f"SFT seeds {d['sft_seeds']} x RL seeds {d['seeds']}" if all(
        sorted(v) == d["seeds"] for v in rl.values()) else "SFT seed: RL seeds " + ", ".join(
        f"{k}: {' '.join(map(str, sorted(v)))}" for k, v in sorted(rl.items()))
    lines = [f"`{d['command']}` ({seeds}, {d['steps']} steps, {made})", "",
             "| arm | n | rl-test greedy mean@1 [95% CI] | rl-test sampled mean@8 [95% CI] | "
             "sft-test | unseen-test | rl train success, first 50 steps: plain / feedback-aware "
             "| zero-std groups |", "|" + " --- |" * 8]
    for arm, s in d["summary"].items():
        st = s.get("train_start", {})
        fb = st.get("train_acc_rl_feedback")
        lines.append(
            f"| {arm} | {s['ci95']['greedy']['n']} | {ci(s['ci95']['greedy'])} | "
            f"{ci(s['ci95']['sampled'])} | {ms(s['final'].get('sft-test / zero-shot'))} | "
            f"{ms(s['final'].get('unseen-test / zero-shot'))} | "
            f"{ms(st.get('train_acc_rl_plain'), 2)} / {ms(fb, 2) if fb else '-'} | "
            f"{ms(s['train'].get('zero_std_frac'), 2)} |")
    return "\n".join(lines) + "\n"


def contrasts_table(name):
    """Paired differences (same SFT model, same RL seed) with 95% cluster-bootstrap intervals."""
    d = load(name)
    if d is None or not d.get("contrasts"):
        return ""
    lines = ["| contrast | n | rl-test greedy mean@1 | rl-test sampled mean@8 |",
             "| --- | --- | --- | --- |"]
    for k, v in d["contrasts"].items():
        n = v["greedy"]["n"] if v["greedy"] else 0
        lines.append(f"| {k} | {n} | {ci(v['greedy'], signed=True)} | "
                     f"{ci(v['sampled'], signed=True)} |")
    return "\n".join(lines) + "\n"


def family_counts_table(name):
    """Per rl family and arm: runs in which it reached 0.9 greedy (median first step), the
    final sampled rate, and the training rollouts' successes summed over the runs."""
    d, arms, fams = arms_and_families(name)
    if d is None:
        return ""
    lines = ["| start rate | arm | learned (>= 0.9 greedy), median step | final sampled "
             "mean@8 | training successes, plain | feedback-aware | runs with a plain success "
             "(first step) |", "|" + " --- |" * 7]
    for fname, f in fams:
        for arm in arms:
            g = d["summary"][arm]["families"][fname]
            step = learned_step(g)
            t = g["train_successes"]
            firsts = sorted(x for x in g["first_plain_success"] if x is not None)
            lines.append(
                f"| {f['designed_start']:.2f} ({fname}) | {arm} | {g['learned_in']}/{g['runs']}"
                + (f", step {step:g}" if step is not None else "") + " | "
                + f"{ms(g.get('final_sampled'))} | {t[0]} / {t[1]} | "
                + (f"{t[2]} / {t[3]}" if t[3] else "-") + " | "
                + f"{g['runs_with_a_plain_success']}/{g['runs']}"
                + (f" ({', '.join(str(x) for x in firsts)})" if firsts else "") + " |")
    return "\n".join(lines) + "\n"


def per_problem_median(rows, key):
    """The median over problems of each problem's mean over its rows (its SFT seeds): the
    statistic of the mechanism table's every column."""
    by = {}
    for r in rows:
        v = key(r)
        if v is not None:
            by.setdefault(r["problem"], []).append(v)
    vals = sorted(sum(v) / len(v) for v in by.values())
    return statistics.median(vals) if vals else None


def mechanism_table(name="mechanism_tiny", y="gold"):
    """The first-step mechanism table (experiments/mechanism.py --tiny), every column the median
    over problems of the per-problem mean over SFT seeds. magnitude: <g_0, g_c> / ||g_0||^2 =
    cos^2 / tau, the first-order zero-shot gain of a gradient step along g_c against one of the
    same size along g_0 (it keeps gradient magnitudes); sign-step share: Adam's first step
    (lr x sign), whose size is the same whatever the gradient's magnitude, so to first order
    it is a |g_0|-weighted sign agreement of g_0 and g_c, at most 1 by construction."""
    d = load(name)
    lines = ["| model | c | log pi(y \\| x, c) | log pi(y \\| x) | tau | cos(g_0, g_c) | "
             "magnitude <g_0, g_c> / \\|\\|g_0\\|\\|^2 | sign-step share | rows with a "
             "negative sign-step share |", "|" + " --- |" * 9]
    for step in (0, 100, 200):
        for ctx, label in (("oracle", "true rule"), ("pool", "run's pool"),
                           ("placebo", "placebo")):
            rows = [r for r in d["rows"] if r["step"] == step and r["context"] == ctx
                    and r["y"] == y]
            med = {k: per_problem_median(rows, f) for k, f in (
                ("lc", lambda r: r["logp_context"]), ("l0", lambda r: r["logp_plain"]),
                ("tau", lambda r: r["tau"]), ("cos", lambda r: r["cos"]["prompt"]),
                ("mag", lambda r: r["cos"]["prompt"] ** 2 / r["tau"] if r["tau"] else None),
                ("share", lambda r: r["share_vs_plain"]))}
            neg = sum(r["share_vs_plain"] is not None and r["share_vs_plain"] < 0 for r in rows)
            lines.append(f"| {'SFT (step 0)' if step == 0 else f'step {step}'} | {label} | "
                         f"{med['lc']:.2f} | {med['l0']:.2f} | {med['tau']:.2f} | "
                         f"{med['cos']:.2f} | {med['mag']:.2f} | {med['share']:.2f} | "
                         f"{neg} of {len(rows)} |")
    return "\n".join(lines) + "\n"


def ratio_cell(r):
    """A ratio of means over SFT seeds with its bootstrap 95% interval, where one was made."""
    lo, hi = r.get("ratio_95") or (None, None)
    return f"{r['ratio_of_means']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else "")


def milli(v, scale=1000):
    """A mean over SFT seeds with its t interval, x 1000 (the mechanism's gains are small)."""
    lo, hi = v["t95"]
    return f"{scale * v['mean']:+.2f} [{scale * lo:+.2f}, {scale * hi:+.2f}]"


def step_mechanism_table(name="step_mechanism", key="own_d_logp"):
    """experiments/step_mechanism.py: per checkpoint step, each scoring's own change (the update
    minus the same step with a zero gradient) of the held-out key (own_d_logp: mean log pi(y* |
    x) over rl-test; own_d_p_procedure: mean probability of the right procedure), mean over SFT
    seeds [t 95%] (x 1000), the paired differences from plain with the sign-flip p, the ratio
    of the means, and the cosine of each update with plain's."""
    d = load(name)
    if d is None:
        return f"(no {name}.json yet: python experiments/step_mechanism.py)\n"

    def ratio(m, s):   # read only where plain's own gain is shown above 0 (ANALYSIS.md)
        return ratio_cell(m[f"{s} - plain"]) if m["plain"]["t95"][0] > 0 else "not read"
    lines = ["| step | SFT seeds | prompt (the paper) | plain | corrected | prompt - plain, p | "
             "corrected - plain, p | ratio to plain [95%]: prompt / corrected | cos with plain "
             "[t 95%]: prompt / corrected |", "|" + " --- |" * 9]
    for step, r in d["steps"].items():
        m = r["summary"][key]
        cos = [milli(r["summary"][f"cos({s}, plain)"], scale=1).replace("+", "")   # unsigned
               for s in ("prompt", "corrected")]                             # like a ratio
        lines.append(
            f"| {step} | {len(r['sft_seeds'])} | {milli(m['prompt'])} | {milli(m['plain'])} | "
            f"{milli(m['corrected'])} | {milli(m['prompt - plain'])}, "
            f"{m['prompt - plain']['sign_flip_p']:.3f} | {milli(m['corrected - plain'])}, "
            f"{m['corrected - plain']['sign_flip_p']:.3f} | "
            f"{ratio(m, 'prompt')} / {ratio(m, 'corrected')} | {cos[0]} / {cos[1]} |")
    return "\n".join(lines) + "\n"


# The strata of experiments/ANALYSIS.md: (label, experiments/sft_draws.py result), one machine each
STRATA = [("C", "sft_draws_C"), ("A", "sft_draws_A"), ("B", "sft_draws_B")]
README_STRATA = STRATA[:1]   # the README's table: the one machine its verdicts come from

# The paper's algorithm and the two extensions, each with the placebo that has its scoring.
METHODS = [("grpo", None), ("lanpo", "placebo"), ("lanpo-plain", "placebo-plain"),
           ("lanpo-corrected", "placebo-corrected")]


def headline_table(name, hard=0.15):
    """The headline table (RESULTS.md): per method, rl-test greedy accuracy, its paired difference from GRPO
    and from the placebo of its own scoring (95% intervals, n runs), and per rl family with a
    designed start rate up to `hard` the median step at which it reached 0.9 greedy (the
    easier families reach 0.9 in every run of every arm on the tiny world)."""
    d, arms, fams = arms_and_families(name)
    if d is None:
        return ""
    fams = [(f, v) for f, v in fams if v["designed_start"] <= hard]
    lines = ["| arm | n | rl-test greedy [95% CI] | minus GRPO | minus its placebo | "
             + " | ".join(f"start {v['designed_start']:.2f}: step to 0.9 (runs)"
                          for _, v in fams) + " |", "|" + " --- |" * (5 + len(fams))]
    for arm, placebo in METHODS:
        if arm not in d["summary"]:
            continue
        s = d["summary"][arm]
        vs_grpo, vs_placebo = (d["contrasts"].get(f"{arm} - {b}", {}).get("greedy")
                               for b in ("grpo", placebo))   # GRPO and placebo: no such key
        cells = []
        for f, _ in fams:
            g = s["families"][f]
            step = learned_step(g)
            cells.append((f"{step:g}" if step is not None else f"not by {d['steps']}")
                         + f" ({g['learned_in']}/{g['runs']})")
        lines.append(f"| {arm} | {s['ci95']['greedy']['n']} | {ci(s['ci95']['greedy'])} | "
                     f"{ci(vs_grpo, signed=True)} | {ci(vs_placebo, signed=True)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ENDPOINT_NAMES = {"sampled": "rl-test sampled mean@8 (primary)", "greedy": "rl-test greedy mean@1",
                  "auc": "area under the greedy rl-test curve"}


def draws_table(what="sampled", name="sft_draws"):
    """experiments/sft_draws.py's summary for one endpoint: per contrast, every SFT seed's
    difference, the signs (a difference of at most one problem is level, 0), the mean over
    seeds with its t interval, the exact two-sided sign-flip p, Holm's adjusted p (over the
    three primary contrasts for those on the primary endpoint, over the ten otherwise) and the
    verdict word (none where the file pools machines); then per hard family the share of runs that had learned it by each step,
    averaged per SFT seed."""
    d = load(name)
    if d is None:
        return f"(no {name}.json yet: python experiments/sft_draws.py)\n"
    seeds = sorted(next(iter(d["contrasts"].values()))[what]["by_sft_seed"], key=int)
    pooled = d.get("pooled_across_machines")
    lines = [f"`{d['command']}`, {ENDPOINT_NAMES[what]}; one value per SFT seed (the mean over "
             "its RL seeds of the paired differences)"
             + (f". **Pooled across machines**: {'; '.join(pooled)}" if pooled else ""), "",
             "| contrast | " + " | ".join(f"SFT {k}" for k in seeds)
             + " | + / 0 / - | mean [t 95%] | sign-flip p | Holm p | verdict |",
             "|" + " --- |" * (len(seeds) + 6)]
    for k, v in d["contrasts"].items():
        c = v[what]
        lo, hi = c["t95"]
        primary = "holm_primary" in c
        lines.append(f"| {'**' + k + '**' if primary else k} | "
                     + " | ".join(f"{c['by_sft_seed'][s]:+.3f}" for s in seeds)
                     + f" | {c['positive']} / {c['zero']} / {c['negative']} | "
                     f"{c['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {c['sign_flip_p']:.3f} | "
                     f"{c.get('holm_primary', c['holm_all']):.3f} | "
                     # ANALYSIS.md: no verdict from runs of several machines pooled
                     f"{'none (pooled)' if pooled else c['verdict']} |")
    arms = [a for a, _ in METHODS] + [p for _, p in METHODS if p]
    arms = [a for a in arms if a in d["learned_by"]]
    fams = list(d["learned_by"][arms[0]])
    steps = [k for k in d["learned_by"][arms[0]][fams[0]] if k not in ("runs", "sft_seeds")]
    lines += ["", "Share of runs that had learned a family (>= 0.9 greedy zero-shot) by step "
              + ", ".join(steps) + " (evaluations every 25 steps; per SFT seed, then the mean "
              "over SFT seeds):", "",
              "| arm | SFT seeds (runs) | " + " | ".join(f"start {f}" for f in fams) + " |",
              "|" + " --- |" * (len(fams) + 2)]
    for arm in arms:
        by = d["learned_by"][arm]
        lines.append(f"| {arm} | {by[fams[0]].get('sft_seeds', '?')} ({by[fams[0]]['runs']}) | "
                     + " | ".join(" / ".join(f"{by[f][s]:.2f}" for s in steps) for f in fams)
                     + " |")
    return "\n".join(lines) + "\n"


def two_lengths_table(short="sft_draws_C", long="sft_draws_C_long", what="sampled"):
    """The same draws at two lengths: per contrast, the shorter runs' values restricted to the
    SFT seeds of the longer runs (which continue those very runs), then the longer runs'
    values; each the mean over those seeds with its t interval and the signs (tie band). It
    says how the shorter runs' signs develop, not whether they replicate: the runs are the same."""
    import sft_draws  # its statistics, said once there (it imports torch, which this file need not)
    s, d = load(short), load(long)
    if s is None or d is None:
        return f"(no {long}.json yet: python experiments/sft_draws.py)\n"
    seeds = sorted(next(iter(d["contrasts"].values()))[what]["by_sft_seed"], key=int)
    missing = sorted({x for c in s["contrasts"].values() for x in seeds
                      if x not in c[what]["by_sft_seed"]}, key=int)
    if missing:
        raise ValueError(f"{short}.json has no SFT seed {', '.join(missing)} of {long}.json")

    def length(summary):   # the runs' length: the last step of their learned-by counts
        counts = next(iter(next(iter(summary["learned_by"].values())).values()))
        return [k for k in counts if k not in ("runs", "sft_seeds")][-1]

    def cell(c):
        lo, hi = c["t95"]
        return (f"{c['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                f"{c['positive']} / {c['zero']} / {c['negative']}")
    lines = [f"{ENDPOINT_NAMES[what]}, SFT seeds {', '.join(seeds)} (mean over SFT seeds "
             "[t 95%], then + / 0 / - with the tie band):", "",
             f"| contrast | step {length(s)}: mean | + / 0 / - "
             f"| step {length(d)}: mean | + / 0 / - |",
             "| --- | --- | --- | --- | --- |"]
    for k, v in d["contrasts"].items():
        at200 = sft_draws.over_seeds({int(x): s["contrasts"][k][what]["by_sft_seed"][x]
                                      for x in seeds})
        lines.append(f"| {k} | {cell(at200)} | {cell(v[what])} |")
    return "\n".join(lines) + "\n"


def verdict_table(strata):
    """The README's result table: per arm of the primary contrasts and per stratum, the primary
    endpoint with its t interval over SFT seeds, minus GRPO and minus its placebo (paired, one
    value per SFT seed, Holm-adjusted p over the three primary contrasts; LANPO plain minus its
    placebo is secondary, Holm over ten, and says so), machine and n.
    strata: [(label, sft_draws result name)]."""
    lines = ["| arm | stratum: SFT seeds (runs) | rl-test sampled mean@8 [t 95%] | minus GRPO "
             "[t 95%], Holm p | minus its placebo [t 95%], Holm p |",
             "| --- | --- | --- | --- | --- |"]

    def cell(c):
        if c is None:
            return "-"
        lo, hi = c["t95"]
        if "holm_primary" in c:
            return f"{c['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {c['holm_primary']:.3f}"
        return f"{c['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {c['holm_all']:.3f} (secondary: of ten)"
    for arm, placebo in METHODS[:3]:
        for label, name in strata:
            d = load(name)
            if d is None or arm not in d["arms"]:
                continue
            a = d["arms"][arm]["sampled"]
            runs = d["learned_by"][arm][next(iter(d["learned_by"][arm]))]
            lo, hi = a["t95"]
            lines.append(
                f"| {arm} | {label}: {a['n_sft_seeds']} ({runs['runs']}) | "
                f"{a['mean']:.3f} [{lo:.3f}, {hi:.3f}] | "
                f"{cell(d['contrasts'].get(f'{arm} - grpo', {}).get('sampled'))} | "
                f"{cell(d['contrasts'].get(f'{arm} - {placebo}', {}).get('sampled'))} |")
    return "\n".join(lines) + "\n"


# the primary contrasts of experiments/ANALYSIS.md, in its order
SIZE_CONTRASTS = ("lanpo - grpo", "lanpo - placebo", "lanpo-plain - grpo")


def size_costs_table(name="size_costs"):
    """Seconds per step at each model size (experiments/sizes.py costs), and what a run of
    that size costs on this machine: the SFT, and one 200-step RL run of each arm."""
    d = load(name)
    if d is None:
        return "(no size_costs.json yet: python experiments/sizes.py costs)\n"
    lines = [f"`{d['command']}`: {d['what']}", "",
             "| size (hidden x layers) | parameters | SFT s/step | SFT (steps) | RL s/step, GRPO | "
             "RL s/step, LANPO | 200 RL steps, GRPO / LANPO |", "|" + " --- |" * 7]
    for size, v in d["sizes"].items():
        lines.append(
            f"| {v['hidden']} x {v['layers']} | {v['parameters'] / 1e6:.2f}M | {v['sft']:.2f} | "
            f"{v['sft'] * v['sft_steps'] / 60:.0f} min ({v['sft_steps']}) | {v['rl grpo']:.2f} | "
            f"{v['rl lanpo']:.2f} | {200 * v['rl grpo'] / 60:.1f} / {200 * v['rl lanpo'] / 60:.1f}"
            " min |")
    return "\n".join(lines) + "\n"


def start_rates_table(gap=0.05):
    """The start rates the size axis' SFT models leave (experiments/world_properties.py --k 32):
    per size and SFT seed, each rl family's sampled rate against its design (bold: off by more
    than `gap`), and the same model's sampled rate on the taught families (sft-test)."""
    import sizes   # here, not at the top: sizes.py stands on torch, the other tables on json
    rows = {(f"{h} x {n}", k): m for size, (h, n, _) in sizes.sizes().items()
            for k, m in sizes.start_rate_models(size, sizes.AXIS_SFT_SEEDS).items()}
    if not rows:
        return "(no world_properties_*.json yet: python experiments/world_properties.py)\n"
    designed = next(iter(rows.values()))["rl_families"]
    fams = sorted(designed, key=lambda f: (designed[f]["designed"], f))
    lines = ["| size | SFT seed | sft-test sampled | " + " | ".join(
        f"{f} ({designed[f]['designed']:.2f})" for f in fams) + f" | within {gap} |",
             "|" + " --- |" * (len(fams) + 4)]
    for (size, seed), m in rows.items():
        got = m["rl_families"]
        off = [abs(got[f]["sampled"] - got[f]["designed"]) > gap for f in fams]
        rates = [f"**{got[f]['sampled']:.3f}**" if o else f"{got[f]['sampled']:.3f}"
                 for f, o in zip(fams, off)]
        lines.append(f"| {size} | {seed} | {m['results']['sampled']['sft-test / zero-shot']:.2f} | "
                     + " | ".join(rates) + f" | {len(fams) - sum(off)} of {len(fams)} |")
    return "\n".join(lines) + "\n"


def sft_models_table(name="sizes_sft"):
    """The size axis' SFT models: what their SFT reported (experiments/sizes.py sft: the last
    held-out loss, greedy sft-test, minutes) beside what world_properties.py measured on them
    (sampled sft-test; rl-test sampled with the right principle in context, and with an
    irrelevant principle beside it)."""
    import sizes
    d = load(name)
    if d is None:
        return f"(no {name}.json yet: python experiments/sizes.py sft)\n"
    lines = ["| size | SFT seed | held-out loss | sft-test greedy | sft-test sampled | right "
             "principle in context | right + irrelevant | minutes |", "|" + " --- |" * 8]
    for size, (h, n, _) in sizes.sizes().items():
        measured = sizes.start_rate_models(size, sizes.AXIS_SFT_SEEDS)
        for k, r in d["sizes"].get(size, {}).items():
            got = measured[int(k)]["results"]["sampled"] if int(k) in measured else {}
            cells = [f"{got[c]:.2f}" if c in got else "-" for c in
                     ("sft-test / zero-shot", "rl-test / right principle",
                      "rl-test / right + irrelevant")]
            minutes = (f"{r['minutes']:.0f}" if r["resumed_from_step"] is None else
                       f"{r['minutes']:.0f} after resuming at step {r['resumed_from_step']}")
            lines.append(f"| {h} x {n} | {k} | {r['heldout_loss']:.3f} | "
                         f"{r['greedy']['sft-test']:.3f} | " + " | ".join(cells) +
                         f" | {minutes} |")
    return "\n".join(lines) + "\n"


def mechanism_by_size_table():
    """The mechanism in the runs' own step by size (step_mechanism.py [--size S], the size
    axis' SFT seeds, the declared checkpoints): plain's zero-shot gain of log pi(y* | x), the
    paper's minus plain's with the sign-flip p, their ratio where plain's gain is shown above 0
    (else not read), and the same difference on the right procedure's probability; gains
    x 1000, [t 95%]."""
    import sizes
    lines = ["| size | step | SFT seeds | plain's gain | the paper's - plain's, p | ratio [95%] | "
             "right procedure: the paper's - plain's, p |", "|" + " --- |" * 7]
    for size, (h, n, _) in sizes.sizes().items():
        measured = sizes.mechanism(size, sizes.AXIS_SFT_SEEDS) or {}
        for step, m in [(s, measured[s]) for s in sizes.MECHANISM_STEPS if s in measured]:
            pp, proc = m["prompt - plain"], m["procedure: prompt - plain"]
            ratio = (ratio_cell(pp) if m["ratio_readable"]
                     else "not read (plain's gain not shown above 0)")
            lines.append(f"| {h} x {n} | {step} | {m['n_sft_seeds']} | {milli(m['plain'])} | "
                         f"{milli(pp)}, {pp['sign_flip_p']:.3f} | {ratio} | "
                         f"{milli(proc)}, {proc['sign_flip_p']:.3f} |")
    return "\n".join(lines) + "\n"


def sizes_table(name="sizes"):
    """The size axis (experiments/sizes.py table): per size the primary contrasts on the
    primary endpoint, GRPO's level beside them (the ceiling), the start rates and the mechanism."""
    d = load(name)
    if d is None:
        return "(no sizes.json yet: python experiments/sizes.py table)\n"

    def cell(c):
        if c is None:
            return "-"
        return (f"{c['mean']:+.3f} [{c['t95'][0]:+.3f}, {c['t95'][1]:+.3f}], "
                f"{c['positive']}/{c['zero']}/{c['negative']}, Holm {c['holm']:.3f}")
    lines = [f"`{d['command']}` (RL seeds {d['rl_seeds']}; per contrast: mean [t 95%], "
             "above / level / below, Holm over the three)", "",
             "| size | parameters | SFT seeds | GRPO [t 95%] | " +
             " | ".join(c for c in SIZE_CONTRASTS) + " | start rates within 0.05 | "
             "mechanism: the paper's zero-shot gain / plain's |", "|" + " --- |" * 9]
    for size, r in d["sizes"].items():
        g, sr, mech = r["arms"]["grpo"], r.get("start_rates"), r.get("mechanism")
        rates = f"{sr['within_0.05']} of {sr['of']}" if sr else "-"
        ratio = "; ".join(
            f"step {step}: " + (ratio_cell(m["prompt - plain"]) if m["ratio_readable"]
                                else "plain's gain not shown above 0")
            for step, m in sorted((mech or {}).items(), key=lambda kv: int(kv[0]))) or "-"
        lines.append(
            f"| {size} | {r['parameters'] / 1e6:.2f}M | {g['n_sft_seeds']} | "
            f"{g['mean']:.3f} [{g['t95'][0]:.3f}, {g['t95'][1]:.3f}] | " +
            " | ".join(cell(r["contrasts"].get(c)) for c in SIZE_CONTRASTS) +
            f" | {rates} | {ratio} |")
    lines += ["", "Trend in log10(parameters), per decade [bootstrap 95%] (permutation p, Holm "
              "over the three):", ""]
    for c, t in d["trend"].items():
        lo, hi = t["slope_95"]
        lines.append(f"- {c}: {t['slope_per_decade']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = "
                     f"{t['permutation_p']:.4f}, Holm {t['holm']:.4f}")
    pred = d.get("prediction")
    if pred:
        lines += ["", "The prediction, by its declared rule (RESULTS.md, \"The size axis\"):", ""]
        for where, v in [*pred["by_size"].items(), ("across sizes", pred["across_sizes"])]:
            lines.append(f"- {where}: {v['status']}"
                         + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else "")
                         + (f"; the mechanism not read at {'; '.join(v['not_read'])}"
                            if v.get("not_read") else ""))
    return "\n".join(lines) + "\n"


def trl_table(name="trl_compare"):
    """This project's GRPO step against TRL's (experiments/trl_compare.py): per machine load and
    thread setting the medians, their ratio and its range over the repeats, and the threads
    each side ran with."""
    d = load(name)
    if d is None:
        return "(no trl_compare.json yet: python experiments/trl_compare.py)\n"
    lines = [f"TRL {d['trl']}; {d['what']}", "",
             "| machine | threads | this project, s/step | TRL, s/step | ratio (range over repeats) "
             "| threads used: this project / TRL |", "|" + " --- |" * 6]
    for key, c in d["cells"].items():
        load_, threads = key.split(" | ")
        used = [x.split(" (")[0].removeprefix("threads: ") for x in (c["threads_ours"],
                                                                     c["threads_trl"])]
        lines.append(f"| {load_} | {threads} | {c['ours']:.3f} | {c['trl']:.3f} | "
                     f"**{c['ratio']:.2f}x** ({min(c['ratio_runs']):.2f}-"
                     f"{max(c['ratio_runs']):.2f}) | {used[0]} / {used[1]} |")
    return "\n".join(lines) + "\n"


# experiments/step_costs.py's items, in the order a step meets them
STEP_ITEMS = ("sampling", "summaries", "ref log-probs", "old log-probs", "policy fwd", "backward",
              "optimizer", "other")


def step_costs_table(name="step_costs", threads="2"):
    """The GRPO and LANPO steps itemized (experiments/step_costs.py): seconds per item and the
    tokens each processes (padded, real), at one thread count."""
    d = load(name)
    if d is None:
        return "(no step_costs.json yet: python experiments/step_costs.py)\n"
    t = d["threads"][threads]
    g, lp = t["arms"]["grpo"], t["arms"]["lanpo"]

    def tokens(a, item):
        if item not in a["padded_tokens"] or not a["padded_tokens"][item]:
            return "-"
        return f"{a['padded_tokens'][item]:,.0f} / {a['real_tokens'][item]:,.0f}"
    lines = [f"{threads} threads; {d['what']}", "",
             "| item | GRPO s | GRPO tokens (padded / real) | LANPO s | LANPO tokens | "
             "LANPO - GRPO s |", "|" + " --- |" * 6]
    items = [i for i in STEP_ITEMS if i in g["seconds"] or i in lp["seconds"]]
    for item in items:
        a, b = g["seconds"].get(item, 0.0), lp["seconds"].get(item, 0.0)
        lines.append(f"| {item} | {a:.3f} | {tokens(g, item)} | {b:.3f} | {tokens(lp, item)} | "
                     f"{b - a:+.3f} |")
    lines.append(f"| **step** | **{g['total']:.3f}** | | **{lp['total']:.3f}** | | "
                 f"**{lp['total'] - g['total']:+.3f} ({t['lanpo_over_grpo']:.2f}x)** |")
    return "\n".join(lines) + "\n"


def busy_costs_table():
    """The GRPO step's items at one and two threads, idle (step_costs.json) and with another
    process keeping one core busy (step_costs_busy.json): where threads that wait cost time."""
    idle, busy = load("step_costs"), load("step_costs_busy")
    if idle is None or busy is None:
        return "(no step_costs_busy.json yet: python experiments/step_costs.py --busy)\n"
    arm = {(load_, t): d["threads"][t]["arms"]["grpo"]
           for load_, d in (("idle", idle), ("busy", busy)) for t in ("1", "2")}
    lines = ["GRPO step, seconds per item (medians); 2 / 1 = two threads over one", "",
             "| item | idle, 1 thread | idle, 2 | 2 / 1 | busy, 1 thread | busy, 2 | 2 / 1 |",
             "|" + " --- |" * 7]
    items = [i for i in STEP_ITEMS if i in arm["idle", "1"]["seconds"]]
    for item in items + ["step"]:
        cells = []
        for load_ in ("idle", "busy"):
            one, two = (arm[load_, t]["total"] if item == "step" else
                        arm[load_, t]["seconds"][item] for t in ("1", "2"))
            cells += [f"{one:.3f}", f"{two:.3f}", f"{two / one:.2f}x"]
        lines.append(f"| {'**step**' if item == 'step' else item} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["costs"]:   # this project against TRL; the two steps itemized
        print(trl_table())
        print(step_costs_table())
        print(busy_costs_table())
        sys.exit()
    if sys.argv[1:2] == ["sizes"]:   # the size axis: costs, then the contrasts by size
        print(size_costs_table())
        print(start_rates_table())
        print(sft_models_table())
        print(mechanism_by_size_table())
        print(sizes_table())
        sys.exit()
    if sys.argv[1:2] == ["draws"]:   # every SFT draw, one value each, by endpoint
        name = sys.argv[2] if len(sys.argv) > 2 else "sft_draws"
        print(draws_table("sampled", name))
        for what in ("greedy", "auc"):
            print(draws_table(what, name).split("\n\nShare")[0])
        if len(sys.argv) > 3:   # draws LONG SHORT: the same draws at the two lengths
            for what in ("sampled", "greedy"):
                print(two_lengths_table(sys.argv[3], name, what))
        sys.exit()
    if sys.argv[1:2] == ["mechanism"]:   # the mechanism: the run's own step, then the probe
        for key in ("own_d_logp", "own_d_p_procedure"):
            print(step_mechanism_table(key=key))
        print(mechanism_table())
        sys.exit()
    if sys.argv[1:2] == ["verdicts"]:   # the primary endpoint by machine (README: its first)
        print(verdict_table(STRATA))
        sys.exit()
    if sys.argv[1:2] == ["headline"]:   # the headline tables
        for suite in sys.argv[2:] or ("controls", "controls_long"):
            print(headline_table(suite))
        sys.exit()
    for suite in sys.argv[1:] or ("main", "p_feedback", "p_feedback_plain", "gamma", "feedback",
                                  "seeding"):
        print(f"### {suite}\n")
        d = load(suite)
        if d is not None and "contrasts" in d:   # suites summarized with intervals
            print(controls_table(suite))
            print(contrasts_table(suite))
            print(family_counts_table(suite))
        else:
            print(suite_table(suite))
            print(families_table(suite))
