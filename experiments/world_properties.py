"""Does the tiny world leave room to learn, and does the SFT model read context?

Measures an SFT model (default runs/tiny/sft) on the tiny world's test problems:
- zero-shot accuracy on sft families, rl families (held out of SFT) and unseen families;
- rl families with the right principle in context, with a wrong one, and with the right one
  plus one irrelevant extra principle from another family (what a mixed retrieval gives);
- rl families with only pitfalls in context (two wrong procedures the model must avoid);
- per rl family, the zero-shot success rate at temperature 1 and how many families sit at 0%
  and at 100% (a family at 0% gives GRPO no signal; DESIGN.md point 5).

    python experiments/world_properties.py [--model runs/tiny/sft] [--k 8]

Writes experiments/results/world_properties.json (with the command and the machine).
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import data  # noqa: E402
import model as M  # noqa: E402
import prompts  # noqa: E402
from reward import reward  # noqa: E402


def accuracy(model, tok, problems, make_prompt, k, greedy, seed=0):
    """Per-problem mean reward over k samples (greedy: one sample)."""
    torch.manual_seed(seed)
    n = 1 if greedy else k
    r = M.sample(model, tok, [make_prompt(p) for p in problems], n=n, greedy=greedy,
                 max_new_tokens=32, micro_batch=512)
    return [statistics.mean(reward(r.texts[i * n + j], p["answer"]) for j in range(n))
            for i, p in enumerate(problems)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/tiny/sft")
    ap.add_argument("--k", type=int, default=8, help="samples per problem at temperature 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "world_properties.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    world = data.TinyWorld()
    model, tok = M.load_model(args.model, device="cpu")
    sets = data.eval_datasets("tiny")
    rng = random.Random(args.seed)
    procs = data.PROCEDURES

    def right(p):
        return world.by_name[p["family"]].principle

    wrong_of = {f.name: data.procedure_text(rng.choice([q for q in procs if q != f.procedure]))
                for f in world.families}
    pitfalls_of = {f.name: [data.procedure_text(q) for q in
                            rng.sample([q for q in procs if q != f.procedure], 2)]
                   for f in world.families}
    # "irrelevant": the principle of another rl family, as a mixed retrieval would add it
    rl = world.families_of("rl")
    other_of = {f.name: next(g.principle for g in rl[1:] + rl[:1] if g.procedure != f.procedure)
                for f in rl}
    conditions = {
        "zero-shot": lambda p: prompts.solve_prompt(p["question"]),
        "right principle": lambda p: prompts.feedback_prompt(p["question"], [right(p)], []),
        "wrong principle": lambda p: prompts.feedback_prompt(p["question"],
                                                             [wrong_of[p["family"]]], []),
        "right + irrelevant": lambda p: prompts.feedback_prompt(
            p["question"], [right(p), other_of[p["family"]]], []),
        "pitfalls only": lambda p: prompts.feedback_prompt(p["question"], [],
                                                           pitfalls_of[p["family"]]),
    }
    results = {"greedy": {}, f"sampled mean@{args.k}": {}}
    for name, probs in sets.items():
        for cond, make in conditions.items():
            if name != "rl-test" and cond != "zero-shot":
                continue
            key = f"{name} / {cond}"
            results["greedy"][key] = statistics.mean(accuracy(model, tok, probs, make, 1, True))
            results[f"sampled mean@{args.k}"][key] = statistics.mean(
                accuracy(model, tok, probs, make, args.k, False, args.seed))
    # per rl family, sampled zero-shot
    per_family = {}
    probs = sets["rl-test"]
    accs = accuracy(model, tok, probs, conditions["zero-shot"], args.k, False, args.seed)
    for p, a in zip(probs, accs):
        per_family.setdefault(p["family"], []).append(a)
    per_family = {f: round(statistics.mean(v), 3) for f, v in per_family.items()}
    summary = {
        "rl families at 0%": sum(v == 0 for v in per_family.values()),
        "rl families at 100%": sum(v == 1 for v in per_family.values()),
        "rl families below 5%": sum(v < 0.05 for v in per_family.values()),
    }
    out = {"command": "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
           "model": args.model, "seed": args.seed, "seconds": round(time.time() - t0, 1),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "results": results, "rl_family_zero_shot": per_family, "summary": summary}
    for mode, r in results.items():
        print(f"\n{mode}")
        for k, v in r.items():
            print(f"  {k:<40} {v:.3f}")
    print("\nrl families, sampled zero-shot:", per_family)
    print(summary)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
