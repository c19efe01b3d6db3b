"""Markdown tables of the committed results (experiments/results/*.json), for the README.

    python experiments/tables.py [SUITE ...]
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


def families_table(name):
    """Per rl family (by designed start rate) and arm: in how many runs the family reached
    0.9 greedy zero-shot accuracy, and the median first step among those."""
    d = load(name)
    if d is None:
        return ""
    arms = list(d["summary"])
    fams = sorted(d["summary"][arms[0]]["families"].items(),
                  key=lambda kv: kv[1]["designed_start"])
    lines = ["| designed start rate | " + " | ".join(arms) + " |",
             "|" + " --- |" * (len(arms) + 1)]
    for name_, f in fams:
        cells = []
        for arm in arms:
            g = d["summary"][arm]["families"][name_]
            hit = [x for x in g["first_step_at_0.9"] if x is not None]
            cells.append(f"{g['learned_in']}/{g['runs']}" +
                         (f", step {statistics.median(hit):g}" if hit else ""))
        lines.append(f"| {f['designed_start']:.2f} ({name_}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for suite in sys.argv[1:] or ("main", "p_feedback", "p_feedback_plain", "gamma", "feedback",
                                  "seeding"):
        print(f"### {suite}\n")
        print(suite_table(suite))
        print(families_table(suite))
