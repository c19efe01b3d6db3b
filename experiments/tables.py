"""Markdown tables of the committed results (experiments/results/*.json), for the README.

    python experiments/tables.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")


def ms(v, digits=3):
    return "-" if v is None else f"{v['mean']:.{digits}f} +- {v['std']:.{digits}f}"


def suite_table(name):
    path = os.path.join(RES, f"{name}.json")
    if not os.path.exists(path):
        return f"(no results for {name} yet)\n"
    d = json.load(open(path))
    cols = [("rl-test / zero-shot", "rl-test zero-shot"), ("rl-test / pool", "rl-test pool"),
            ("sft-test / zero-shot", "sft-test zero-shot"),
            ("unseen-test / zero-shot", "unseen-test zero-shot")]
    train_cols = [("reward_feedback", "train reward, feedback"),
                  ("reward_plain", "train reward, plain"), ("zero_std_frac", "zero-std groups"),
                  ("retrieval_precision", "retrieval precision"),
                  ("summary_correct_given_right", "summary correct*")]
    head = "| arm | " + " | ".join(c[1] for c in cols + train_cols) + " |"
    lines = [f"`{d['command']}` ({len(d['seeds'])} seeds, {d['steps']} steps)", "", head,
             "|" + " --- |" * (len(cols) + len(train_cols) + 1)]
    for arm, s in d["summary"].items():
        cells = [ms(s["final"].get(k)) for k, _ in cols] + \
                [ms(s["train"].get(k), 2) for k, _ in train_cols]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for suite in ("main", "p_feedback", "p_feedback_plain", "gamma", "feedback", "seeding"):
        print(f"### {suite}\n")
        print(suite_table(suite))
