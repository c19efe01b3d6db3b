"""What the unseen split measures: which procedure a model writes for a family name no stage
taught it, and how often that guess happens to be the family's right one.

No stage teaches an unseen family's procedure: SFT shows its name only in context-reading
examples with a random procedure in the context, and RL never trains on it. So a model's greedy
answer to an unseen problem follows whatever procedure its weights favour for that name token,
a guess. Per model: per unseen family, the procedure of its greedy responses on unseen-test
(the first procedure each states), whether it is the family's true one, and how concentrated
the guesses are over the nine families (the most frequent procedure's share).

    python experiments/unseen.py [--sft-seeds 5 6 7 8 9] [--runs-root experiments/runs/controls_sft5-9]

Models: runs/tiny/sft-seed<S> (step 0), and the final model of every arm's run of that seed
under --runs-root. Writes experiments/results/unseen.json.
"""
import argparse
import collections
import glob
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import prompts  # noqa: E402
from support import model as M  # noqa: E402
from support import world as W  # noqa: E402


def guesses(model_dir, world, problems):
    """Per unseen family: the procedures its greedy responses state, and the share right."""
    model, tok = M.load_model(model_dir, device="cpu")
    out = M.sample(model, tok, [prompts.solve_prompt(p["question"]) for p in problems],
                   greedy=True, max_new_tokens=32, micro_batch=256)
    by_family = collections.defaultdict(list)
    for p, text in zip(problems, out.texts):
        procs = W.parse_procedures(text)
        by_family[p["family"]].append(W.procedure_text(procs[0]) if procs else None)
    fams = {f.name: f for f in world.families_of("unseen")}
    result = {}
    for name, said in sorted(by_family.items()):
        mode, count = collections.Counter(said).most_common(1)[0]
        result[name] = {"true": fams[name].principle, "mode": mode,
                        "mode_share": count / len(said),
                        "right": sum(s == fams[name].principle for s in said) / len(said)}
    modes = collections.Counter(r["mode"] for r in result.values())
    return {"accuracy": sum(r["right"] for r in result.values()) / len(result),
            "families_right": sum(r["right"] >= 0.5 for r in result.values()),
            "distinct_guesses": len(modes), "top_guess_share": modes.most_common(1)[0][1] / 9,
            "families": result}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-seeds", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    ap.add_argument("--runs-root", default=os.path.join(HERE, "runs", "controls_sft5-9"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = W.TinyWorld()
    problems = world.problems("unseen", "test")
    out = {"command": "python experiments/unseen.py " + " ".join(sys.argv[1:]), "models": {}}
    for seed in args.sft_seeds:
        dirs = {"sft": os.path.join(ROOT, "runs", "tiny", f"sft-seed{seed}")}
        for final in sorted(glob.glob(os.path.join(args.runs_root, "*", f"sft{seed}-rl0",
                                                   "final"))):
            dirs[final.split(os.sep)[-3]] = final
        for name, d in dirs.items():
            g = guesses(d, world, problems)
            out["models"][f"sft{seed}/{name}"] = g
            print(f"SFT seed {seed} {name:18} unseen-test {g['accuracy']:.3f}, families right "
                  f"{g['families_right']}/9, distinct guesses {g['distinct_guesses']}, top "
                  f"guess on {g['top_guess_share'] * 9:.0f}/9", flush=True)
    with open(os.path.join(HERE, "results", "unseen.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
