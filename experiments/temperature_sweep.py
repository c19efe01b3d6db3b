"""How much does a higher sampling temperature explore? The sweep behind GRPO's temperature arm.

A feedback-aware rollout succeeds more often than a plain one, even when its context carries no
experience (a placebo: two random procedures listed as pitfalls). The fair question for LANPO
is then whether GRPO, given as much exploration by a cheaper means, does as well. This script
measures, on the SFT models, the step-0 success of plain rollouts on the rl families' training
problems at several temperatures, per family, next to the success of rollouts whose prompt
lists two random wrong procedures as pitfalls (the placebo's typical context) at temperature 1,
and the sft families' success at each temperature (what a hot sampler costs elsewhere).

    python experiments/temperature_sweep.py --models runs/tiny/sft-seed0 ... --k 16

Writes experiments/results/temperature_sweep.json (command, machine, per model and the mean).
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

from support import model as M  # noqa: E402
import prompts  # noqa: E402
from support import world as W  # noqa: E402
from reward import reward  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def success_by_family(model, tok, problems, make_prompt, k, temperature, seed):
    torch.manual_seed(seed)
    texts = M.sample(model, tok, [make_prompt(p) for p in problems], n=k,
                     temperature=temperature, max_new_tokens=32, micro_batch=512).texts
    by = {}
    for i, p in enumerate(problems):
        by.setdefault(p["family"], []).extend(reward(t, p["answer"])
                                              for t in texts[i * k:(i + 1) * k])
    return {f: statistics.mean(v) for f, v in by.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["runs/tiny/sft"])
    ap.add_argument("--temperatures", type=float, nargs="+",
                    default=[1.0, 1.25, 1.5, 1.75, 2.0])
    ap.add_argument("--k", type=int, default=16, help="samples per problem")
    ap.add_argument("--per-family", type=int, default=16, help="training problems per family")
    args = ap.parse_args()
    world, rng = W.TinyWorld(), random.Random(0)
    rl = [p for f in world.families_of("rl")
          for p in [q for q in world.problems("rl", "train") if q["family"] == f.name]
          [:args.per_family]]
    sft_probs = rng.sample(world.problems("sft", "train"), 9 * args.per_family)
    start = {f.name: f.start_rate for f in world.families_of("rl")}
    pitfalls = {f.name: [W.procedure_text(q) for q in
                         rng.sample([q for q in W.PROCEDURES if q != f.procedure], 2)]
                for f in world.families_of("rl")}
    plain = lambda p: prompts.solve_prompt(p["question"])   # noqa: E731
    t0, per_model = time.time(), {}
    for path in args.models:
        model, tok = M.load_model(path, device="cpu")
        res = {"plain": {}, "sft_families": {}}
        for T in args.temperatures:
            fam = success_by_family(model, tok, rl, plain, args.k, T, seed=1)
            res["plain"][str(T)] = fam
            res["sft_families"][str(T)] = statistics.mean(
                success_by_family(model, tok, sft_probs, plain, args.k, T, seed=2).values())
        res["random_pitfalls_T1"] = success_by_family(
            model, tok, rl, lambda p: prompts.feedback_prompt(p["question"], [],
                                                              pitfalls[p["family"]]),
            args.k, 1.0, seed=3)
        per_model[path] = res
        print(path, {T: round(statistics.mean(v.values()), 3) for T, v in res["plain"].items()},
              flush=True)
    fams = sorted(start, key=start.get)
    mean = {"plain": {str(T): {f: statistics.mean(m["plain"][str(T)][f]
                                                   for m in per_model.values()) for f in fams}
                      for T in args.temperatures},
            "sft_families": {str(T): statistics.mean(m["sft_families"][str(T)]
                                                     for m in per_model.values())
                             for T in args.temperatures},
            "random_pitfalls_T1": {f: statistics.mean(m["random_pitfalls_T1"][f]
                                                      for m in per_model.values()) for f in fams}}
    out = {"command": "python experiments/temperature_sweep.py " + " ".join(sys.argv[1:]),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "seconds": round(time.time() - t0, 1), "designed_start": start,
           "per_model": per_model, "mean": mean}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "temperature_sweep.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"\n{'family (start)':<20}" + "".join(f"{'T=' + str(T):>9}" for T in args.temperatures)
          + f"{'pitfalls':>10}")
    for f in fams:
        print(f"{f + f' ({start[f]:.2f})':<20}" +
              "".join(f"{mean['plain'][str(T)][f]:>9.3f}" for T in args.temperatures) +
              f"{mean['random_pitfalls_T1'][f]:>10.3f}")
    print(f"{'rl mean':<20}" + "".join(
        f"{statistics.mean(mean['plain'][str(T)].values()):>9.3f}" for T in args.temperatures)
        + f"{statistics.mean(mean['random_pitfalls_T1'].values()):>10.3f}")
    print(f"{'sft families':<20}" + "".join(f"{mean['sft_families'][str(T)]:>9.3f}"
                                            for T in args.temperatures))


if __name__ == "__main__":
    main()
