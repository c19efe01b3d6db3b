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
            ("rl-test / self-correct", "rl-test self-correct"),
            ("sft-test / zero-shot", "sft-test zero-shot"),
            ("unseen-test / zero-shot", "unseen-test zero-shot")]
    train_cols = [("reward_feedback", "train reward, feedback"),
                  ("reward_plain", "train reward, plain"), ("zero_std_frac", "zero-std groups"),
                  ("retrieval_precision", "retrieval precision"),
                  ("summary_correct_given_right", "summary correct*")]
    # Training accuracy on the rl families over the last 50 steps, split by rollout kind (runs
    # made before train.py logged it have none): next to rl-test zero-shot it is the leakage
    # signature (training accuracy up, test accuracy flat).
    if any(s.get("train_end", {}).get("train_acc_rl_plain") for s in d["summary"].values()):
        train_cols += [("train_acc_rl_plain", "rl train acc, plain (last 50)"),
                       ("train_acc_rl_feedback", "rl train acc, feedback (last 50)")]
    head = "| arm | " + " | ".join(c[1] for c in cols + train_cols) + " |"
    lines = [f"`{d['command']}` ({len(d['seeds'])} seeds, {d['steps']} steps)", "", head,
             "|" + " --- |" * (len(cols) + len(train_cols) + 1)]
    for arm, s in d["summary"].items():
        cells = [ms(s["final"].get(k)) for k, _ in cols] + \
                [ms(s["train_end"].get(k) if "last 50" in label else s["train"].get(k), 2)
                 for k, label in train_cols]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for suite in ("main", "p_feedback", "p_feedback_plain", "gamma", "feedback", "seeding"):
        print(f"### {suite}\n")
        print(suite_table(suite))
