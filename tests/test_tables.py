"""experiments/tables.py prints the headline of RESULTS.md and the README from the committed
JSON: each method is paired with its own placebo, "step to 0.9" is the median over the runs
that got there, and the README's numbers are the ones the table prints."""
import copy
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
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


def test_the_readme_quotes_the_headline_as_the_table_prints_it():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = " ".join(f.read().split())
    table = tables.headline_table("controls")
    for arm, quoted in (("lanpo", ["-0.065 [-0.098, -0.031]", "+0.024 [-0.038, +0.091]"]),
                        ("lanpo-plain", ["+0.090 [+0.054, +0.113]", "+0.101 [+0.033, +0.171]"]),
                        ("lanpo-corrected", ["-0.034 [-0.090, +0.024]",
                                             "-0.023 [-0.081, +0.044]"])):
        for q in quoted:
            assert q in row(table, arm) and q in readme, (arm, q)
