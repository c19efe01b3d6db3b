"""experiments/tables.py prints the headline of RESULTS.md and the README from the committed
JSON: each method is paired with its own placebo, "step to 0.9" is the median over the runs
that got there, the README's numbers are the ones the table prints; experiments/sft_draws.py's
statistics are exact."""
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


def test_the_readme_quotes_the_sft_draws_as_the_table_prints_them():
    """The README's result paragraph quotes each contrast (mean [t interval] and the sign-flip
    p) as `python experiments/tables.py draws` prints it from the committed JSON."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = " ".join(f.read().split())
    table = tables.draws_table("greedy")
    for contrast, quoted in (("lanpo - grpo", "-0.043 [-0.072, -0.013]"),
                             ("lanpo - placebo", "+0.002 [-0.036, +0.040]"),
                             ("lanpo-plain - grpo", "+0.078 [+0.018, +0.139]"),
                             ("lanpo-plain - placebo-plain", "+0.072 [-0.019, +0.164]"),
                             ("lanpo-corrected - grpo", "-0.019 [-0.067, +0.029]")):
        cells = [c.strip() for c in row(table, contrast).split("|")]
        assert cells[-3] == quoted and quoted in readme, (contrast, cells[-3])
        assert f"{quoted}, p = {cells[-2]}" in readme, (contrast, cells[-2])
    signs = [c.strip() for c in row(table, "lanpo - grpo").split("|")][-4]
    assert signs == "0 / 4 / 6" and "below GRPO on 6 of 10 SFT draws and level on 4" in readme
    # the 600-step sentence, from the long runs' table
    long = tables.draws_table("greedy", "sft_draws_long")
    for contrast, quoted in (("lanpo - grpo", "-0.077 [-0.168, +0.015]"),
                             ("lanpo-plain - grpo", "+0.032 [-0.029, +0.094]")):
        cells = [c.strip() for c in row(long, contrast).split("|")]
        assert cells[-3] == quoted and quoted in readme, (contrast, cells[-3])
    cells = [c.strip() for c in row(long, "lanpo - grpo").split("|")]
    assert cells[-4] == "1 / 0 / 4" and f"-0.077 [-0.168, +0.015], p = {cells[-2]}" in readme
    assert "below GRPO on 4 of the 5 seeds" in readme
