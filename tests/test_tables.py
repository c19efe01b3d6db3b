"""experiments/tables.py prints the headline of RESULTS.md and the README from the committed
JSON: each method is paired with its own placebo, "step to 0.9" is the median over the runs
that got there, the README's numbers are the ones the table prints; experiments/sft_draws.py's
statistics are exact."""
import copy
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import sft_draws as D  # noqa: E402
import tables  # noqa: E402


def row(table, arm):
    return next(line for line in table.splitlines() if line.startswith(f"| {arm} |"))


def test_each_method_is_paired_with_the_placebo_of_its_own_scoring(monkeypatch):
    d = copy.deepcopy(tables.load("controls"))
    for i, key in enumerate(d["contrasts"]):   # a distinct, recognizable value per contrast
        d["contrasts"][key]["greedy"] = {"mean": i / 100 + 0.001, "lo": 0.0, "hi": 1.0, "n": 10}
    monkeypatch.setattr(tables, "load", lambda name: d)
    table = tables.headline_table("controls")
    for arm, placebo in (("lanpo", "placebo"), ("lanpo-plain", "placebo-plain"),
                         ("lanpo-corrected", "placebo-corrected")):
        cells = [c.strip() for c in row(table, arm).split("|")]
        want_grpo = d["contrasts"][f"{arm} - grpo"]["greedy"]["mean"]
        want_placebo = d["contrasts"][f"{arm} - {placebo}"]["greedy"]["mean"]
        assert cells[4].startswith(f"{want_grpo:+.3f} ") and \
            cells[5].startswith(f"{want_placebo:+.3f} "), (arm, cells)


def test_step_to_0_9_is_the_median_over_the_runs_that_learned():
    g = {"first_step_at_0.9": [None, 600, 100, None, 150]}
    assert tables.learned_step(g) == 150   # not the mean (283), not counting the Nones
    assert tables.learned_step({"first_step_at_0.9": [None, None]}) is None


def test_the_readme_results_are_the_jsons_and_fit_in_fifteen_lines():
    """The README's result table is `python experiments/tables.py verdicts` for its stratum, row
    for row; every count, verdict and range its sentences give is the committed JSON's; the
    section fits in 15 lines and the README in 220."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    lines, flat = readme.splitlines(), " ".join(readme.split())
    for line in tables.verdict_table(tables.README_STRATA).strip().splitlines():
        assert line in lines, line
    c = tables.load("sft_draws_C")["contrasts"]
    first = c["lanpo - grpo"]["sampled"]
    assert (first["positive"], first["zero"], first["negative"]) == (0, 1, 9)
    assert first["verdict"] == "below" and "ends below GRPO** (9 of 10 draws below, 1 level, " \
        "none above; all 11 draws of two other machines below)" in flat
    # a secondary contrast carries no verdict in the README's sentences (ANALYSIS.md)
    section = readme.split("## What the tiny world shows")[1].split("\n## ")[0]
    assert "above its placebo" not in " ".join(section.split())
    # the mechanism: on how many SFT draws the paper's step raised log pi(y* | x) less than plain
    mech = tables.load("step_mechanism")["steps"]
    below = []
    for step in ("25", "100", "200"):
        per = mech[step]["per_seed"].values()
        gain = [{k: sum(b[k]["own_d_logp"] for b in r["batches"]) for k in ("prompt", "plain")}
                for r in per]
        below.append(f"{sum(g['prompt'] < g['plain'] for g in gain)}")
    assert (f"(on {below[0]}, {below[1]} and {below[2]} of 10 draws at steps 25, 100 and 200)"
            in flat), below
    others = sum(tables.load(n)["contrasts"]["lanpo - grpo"]["sampled"]["negative"]
                 for n in ("sft_draws_A", "sft_draws_B"))
    assert others == 11
    for k, words in (("lanpo - placebo", "not shown to differ from its placebo"),
                     ("lanpo-plain - grpo", "not shown to differ from GRPO")):
        assert c[k]["sampled"]["verdict"] == "not shown" and words in flat.replace("** ", " ")
    steps = tables.load("step_mechanism")["steps"].values()
    for scoring, where in (("prompt", "200): "), ("corrected", "corrected ")):
        r = [s["summary"]["own_d_logp"][f"{scoring} - plain"]["ratio_of_means"] for s in steps]
        assert f"{where}{min(r):.2f}-{max(r):.2f}" in flat, (scoring, r)
    bounds = [b for s in steps for b in s["summary"]["own_d_logp"]["prompt - plain"]["ratio_95"]]
    assert f"(intervals {min(bounds):.2f} to {max(bounds):.2f};" in flat
    q = tables.load("quickstart_draws")
    greedy = [x["rl_test_greedy"] for x in q["runs"]]
    sampled = [x["rl_test_sampled"] for x in q["runs"]]
    assert len(greedy) >= 10
    assert f"{min(greedy):.3f} to {max(greedy):.3f} greedy (median " \
           f"{q['rl_test_greedy']['median']:.3f})" in flat
    assert f"sampled mean@8 {min(sampled):.3f}-{max(sampled):.3f}" in flat
    section = readme.split("## What the tiny world shows")[1].split("\n## ")[0]
    assert len([x for x in section.splitlines() if x.strip()]) <= 15
    assert len(lines) <= 220


def test_the_verdict_table_gives_holm_adjusted_p_on_the_primary_endpoint():
    """Stratum A's row of the paper's algorithm: sampled mean@8 minus GRPO is -0.077 with raw
    sign-flip p 1/16 on 5 of 5 seeds; the table must give Holm's p over the three primary
    contrasts (3/16 = 0.188), and the secondary contrast (LANPO plain minus its placebo) its
    Holm p over ten."""
    table = tables.verdict_table([("A", "sft_draws_A")])
    cells = [c.strip() for c in row(table, "lanpo").split("|")]
    assert cells[2] == "A: 5 (10)" and cells[3] == "0.765 [0.710, 0.820]"
    assert cells[4] == "-0.077 [-0.112, -0.042], p = 0.188"
    plain = [c.strip() for c in row(table, "lanpo-plain").split("|")]
    d = tables.load("sft_draws_A")["contrasts"]["lanpo-plain - placebo-plain"]["sampled"]
    assert plain[5].endswith(f"p = {d['holm_all']:.3f} (secondary: of ten)") and \
        d["holm_all"] > d["sign_flip_p"]


def test_the_step_mechanism_table_is_the_jsons_mean_over_sft_seeds(monkeypatch):
    per = {"own_d_logp": {
        "prompt": {"mean": 0.001, "t95": [0.0, 0.002], "n": 2},
        "plain": {"mean": 0.004, "t95": [0.003, 0.005], "n": 2},
        "corrected": {"mean": 0.002, "t95": [0.001, 0.003], "n": 2},
        "prompt - plain": {"mean": -0.003, "t95": [-0.004, -0.002], "n": 2,
                           "sign_flip_p": 0.5, "ratio_of_means": 0.25},
        "corrected - plain": {"mean": -0.002, "t95": [-0.003, -0.001], "n": 2,
                              "sign_flip_p": 0.5, "ratio_of_means": 0.5}},
        "cos(prompt, plain)": {"mean": 0.7, "t95": [0.6, 0.8]},
        "cos(corrected, plain)": {"mean": 0.8, "t95": [0.75, 0.85]}}
    monkeypatch.setattr(tables, "load", lambda name: {"steps": {"100": {
        "sft_seeds": [10, 11], "summary": per}}})
    cells = [c.strip() for c in row(tables.step_mechanism_table(), "100").split("|")]
    assert cells[2:6] == ["2", "+1.00 [+0.00, +2.00]", "+4.00 [+3.00, +5.00]",
                          "+2.00 [+1.00, +3.00]"]
    assert cells[6] == "-3.00 [-4.00, -2.00], 0.500" and cells[8:10] == [
        "0.25 / 0.50", "0.70 [0.60, 0.80] / 0.80 [0.75, 0.85]"]
    # the ratio's bootstrap interval where one was made; no ratio read where plain's own gain
    # is not shown above 0 (experiments/ANALYSIS.md)
    per["own_d_logp"]["prompt - plain"]["ratio_95"] = [0.1, 0.4]
    cells = [c.strip() for c in row(tables.step_mechanism_table(), "100").split("|")]
    assert cells[8] == "0.25 [0.10, 0.40] / 0.50"
    per["own_d_logp"]["plain"]["t95"] = [-0.001, 0.009]
    cells = [c.strip() for c in row(tables.step_mechanism_table(), "100").split("|")]
    assert cells[8] == "not read / not read"


def test_results_quotes_the_step_mechanism_tables():
    """RESULTS.md's two tables of the mechanism in the run's own step are `python
    experiments/tables.py` from the committed step_mechanism.json, row for row (ratios with
    their bootstrap intervals, cosines with their t intervals)."""
    with open(os.path.join(ROOT, "RESULTS.md")) as f:
        results = f.read().splitlines()
    for key in ("own_d_logp", "own_d_p_procedure"):
        rows = [x for x in tables.step_mechanism_table(key=key).splitlines() if x.startswith("| ")]
        assert len(rows) == 5
        for r in rows:
            assert r in results, r


def test_the_readmes_quickstart_table_is_the_committed_seed_0_run():
    """The quickstart's three-mode table and its SFT -> RL line in the README are evaluate.py's
    printout of the committed seed-0 run (experiments/results/quickstart_seed0.json), digit for
    digit, and the SFT report's rl-test number is that run's step 0."""
    import io
    import evaluate
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    run = tables.load("quickstart_seed0")["runs"][0]
    assert run["sft_seed"] == 0
    buf = io.StringIO()
    evaluate.print_table(run["table"], 1, file=buf)
    rows = buf.getvalue().splitlines()[:5]   # header, rule, rl-test, sft-test, unseen-test
    for line in rows:
        assert "  " + line + "\n" in readme, line
    t = run["table"]
    assert (f"rl-test {run['rl_test_greedy_sft']:.3f} -> {t['rl-test']['zero-shot']['mean@1']:.3f}"
            in readme)
    assert f"{run['rl_test_greedy_sft']:.3f} on the rl families" in readme
    sft = run["sft_report"]   # the SFT report that sft.py printed for that model
    flat = " ".join(readme.split())
    assert f"**{sft['zero_shot_accuracy']['sft-test']:.3f} on the families it was taught**" in flat
    assert f"{sft['zero_shot_accuracy']['unseen-test']:.3f} on the unseen ones" in flat
    assert f"pitfalls-only prompts ({sft['skills']['inter_pitfalls']['matches_target']:.2f}:" \
        in flat
    assert all(v["format_ok"] == 1 for v in sft["skills"].values())   # "the expected format"
    assert [k for k, v in sft["skills"].items() if v["matches_target"] < 1] == ["inter_pitfalls"]


def test_a_table_pooled_across_machines_gives_no_verdict(monkeypatch):
    """experiments/ANALYSIS.md: runs of several machines are never pooled for a verdict, so
    draws_table prints no verdict word where the file says it pools machines."""
    d = copy.deepcopy(tables.load("sft_draws_C"))
    plain = tables.draws_table("sampled", "sft_draws_C")
    assert "| below |" in plain and "none (pooled)" not in plain
    d["pooled_across_machines"] = ["made on different machines: ..."]
    monkeypatch.setattr(tables, "load", lambda name: d)
    pooled = tables.draws_table("sampled", "sft_draws_C")
    rows = [r for r in pooled.splitlines() if r.startswith("| ") and " / " in r and "SFT" not in r]
    assert rows and all(r.endswith("| none (pooled) |") for r in rows if "[" in r)


def test_the_two_lengths_table_reads_the_short_runs_on_the_long_runs_seeds_only(monkeypatch):
    """The 600-step runs continue five of the 200-step table's ten SFT seeds: the step-200
    column is over those five seeds, not the ten, and a long table whose seeds the short one
    lacks is refused."""
    short = copy.deepcopy(tables.load("sft_draws_C"))
    long_ = copy.deepcopy(short)
    five = ["10", "11", "12", "13", "14"]
    for c in long_["contrasts"].values():
        for e in c.values():
            e.update(D.over_seeds({int(k): e["by_sft_seed"][k] + 0.5 for k in five}))
    for arm in long_["learned_by"].values():
        for fam in arm.values():
            fam["600"] = 1.0
    monkeypatch.setattr(tables, "load", lambda name: {"short": short, "long": long_}[name])
    table = tables.two_lengths_table("short", "long", "sampled")
    assert "step 600: mean" in table
    c = short["contrasts"]["lanpo - grpo"]["sampled"]["by_sft_seed"]
    five_mean = sum(c[k] for k in five) / 5
    assert abs(five_mean - sum(c.values()) / len(c)) > 0.001   # the two would differ
    r = row(table, "lanpo - grpo").split(" | ")
    assert r[1].startswith(f"{five_mean:+.3f} [")
    assert r[3].startswith(f"{five_mean + 0.5:+.3f} [")
    del short["contrasts"]["lanpo - grpo"]["sampled"]["by_sft_seed"]["12"]
    with pytest.raises(ValueError, match="no SFT seed 12"):
        tables.two_lengths_table("short", "long", "sampled")


def test_results_quotes_stratum_cs_600_step_tables():
    """RESULTS.md's 600-step tables of stratum C are `python experiments/tables.py draws
    sft_draws_C_long sft_draws_C` from the committed JSON, row for row: every endpoint's
    per-seed table, the learned-by shares at steps 50-600, and the two lengths side by side."""
    with open(os.path.join(ROOT, "RESULTS.md")) as f:
        results = f.read().splitlines()
    tabs = [tables.draws_table(what, "sft_draws_C_long") for what in ("sampled", "greedy", "auc")]
    tabs += [tables.two_lengths_table("sft_draws_C", "sft_draws_C_long", what)
             for what in ("sampled", "greedy")]
    rows = [r for t in tabs for r in t.splitlines() if r.startswith("| ") and "---" not in r]
    assert len(rows) >= 3 * 11 + 8 + 2 * 11
    for r in rows:
        assert r in results, r
