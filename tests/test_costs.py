"""The cost measurements: experiments/step_costs.py itemizes the steps train.py itself takes
(nothing reimplemented) and leaves train.py as it found it; RESULTS.md quotes the committed
tables; TRL stays an optional install of experiments/trl_compare.py alone."""
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import step_costs as SC  # noqa: E402
import tables  # noqa: E402

from support import model as M  # noqa: E402

SMALL = ["--problems-per-step", "2", "--group-size", "4", "--max-new-tokens", "8",
         "--summary-tokens", "8"]


def test_step_costs_itemizes_the_steps_train_py_takes(tiny_dir):
    """GRPO's step has no summaries and LANPO's has; the items (the other phases included) add
    up to the step; the reference and the policy score the same tokens; the tokens counted are
    the rows' (padded: rows x the longest row); and the wrapping is undone."""
    meter = SC.Meter()
    grpo = SC.Arm("grpo", ["--init", tiny_dir, *SMALL, "--p-feedback", "0"], seed=0)
    lanpo = SC.Arm("lanpo", ["--init", tiny_dir, *SMALL], seed=0)
    # (after the optimizers exist: torch wraps AdamW.step once, when the first one is made)
    original = (M.sample, M.token_logprobs, torch.Tensor.backward, torch.optim.AdamW.step)
    undo = SC.instrument(meter)
    try:
        rows = {}
        for _ in range(3):
            for arm in (grpo, lanpo):
                meter.ref = arm.ref
                rows.setdefault(arm.name, []).append(arm.run_step(meter))
    finally:
        undo()
    assert (M.sample, M.token_logprobs, torch.Tensor.backward, torch.optim.AdamW.step) == original
    for name, steps in rows.items():
        for r in steps:
            assert abs(sum(r["seconds"].values()) - r["total"]) < 1e-9
            assert r["seconds"]["other"] >= 0
            for item in ("sampling", "ref log-probs", "policy fwd", "backward", "optimizer"):
                assert r["seconds"][item] > 0, (name, item)
            # 2 problems x G = 4 rollouts: the reference and the policy score the same rows
            assert r["real"]["ref log-probs"] == r["real"]["policy fwd"] > 8
            assert r["padded"]["sampling"] >= r["real"]["sampling"] > 0
            assert r["padded"]["sampling"] % 8 == 0   # 8 rows, each padded to the longest
            assert ("summaries" in r["seconds"]) == (name == "lanpo")
    summary = SC.summarize(rows["lanpo"], warmup=1)
    assert summary["steps"] == 2 and "summaries" in summary["seconds"]


def test_results_quotes_the_committed_cost_tables():
    """RESULTS.md's tables of the TRL comparison and of the itemized steps are `python
    experiments/tables.py costs`, row for row, from the committed JSON."""
    with open(os.path.join(ROOT, "RESULTS.md")) as f:
        results = f.read().splitlines()
    for table in (tables.trl_table(), tables.step_costs_table(), tables.busy_costs_table()):
        rows = [x for x in table.splitlines() if x.startswith("| ")]
        assert len(rows) >= 5
        for row in rows:
            assert row in results, row


def test_nothing_but_trl_compare_imports_trl():
    """TRL is an optional install for experiments/trl_compare.py alone: no other file imports
    it, and trl_compare imports it only inside the worker that the TRL environment runs."""
    found = []
    for d, _, files in os.walk(ROOT):
        if any(part in d for part in (".venv", ".git", "runs")):
            continue
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                with open(path) as fh:
                    for line in fh:
                        if re.match(r"\s*(import trl\b|from trl\b)", line):
                            found.append((os.path.relpath(path, ROOT), line.startswith(" ")))
    assert found and all(p == os.path.join("experiments", "trl_compare.py") and indented
                         for p, indented in found), found
