"""Is the tiny world a sound instrument? Its designed properties, measured on SFT models.

For each SFT model given (default runs/tiny/sft), on the tiny world's test problems:
- zero-shot accuracy (greedy, and sampled at temperature 1) on sft, rl and unseen families;
- rl families with the right principle in context, a wrong one, the right one plus an
  irrelevant one, and only pitfalls: does the model read context, both ways?
- per rl family: the sampled zero-shot rate against the rate the world designed for it
  (world.RL_START_RATES), the share of samples that follow its designed pitfall, and the
  greedy accuracy (designed to be about 0: the pitfall is the model's favorite).
And, from the world alone (no model), the numbers-only classifiers: how well can a problem's
procedure be guessed from its three numbers? (1) by which procedures the numbers are valid for,
weighted by how many number triples each procedure allows (the classifier that read 0.45 on an
earlier world whose numbers were chosen to suit the right procedure); (2) naive Bayes on
a, b, c learned from every (numbers, procedure) pair a model sees in SFT's plain solutions and
in RL's training problems. Chance is 1/9.

    python experiments/world_properties.py [--models runs/tiny/sft ...] [--k 32]
    python experiments/world_properties.py --classifiers-only   # the classifiers alone

Writes experiments/results/world_properties.json (command, machine, per model and a summary
over models: for each rl family its designed rate, its rate per model, and the largest gap).
"""
import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from support import data  # noqa: E402
from support import model as M  # noqa: E402
import prompts  # noqa: E402
from support import curriculum  # noqa: E402
from support import world as W  # noqa: E402
from reward import reward  # noqa: E402


def sample(model, tok, problems, make_prompt, k, greedy, seed=0):
    """Texts of k samples per problem (one when greedy), problem-major."""
    torch.manual_seed(seed)
    return M.sample(model, tok, [make_prompt(p) for p in problems], n=1 if greedy else k,
                    greedy=greedy, max_new_tokens=32, micro_batch=512).texts


def accuracy(problems, texts, k):
    return statistics.mean(reward(texts[i * k + j], p["answer"])
                           for i, p in enumerate(problems) for j in range(k))


def measure_model(path, world, sets, k, seed):
    model, tok = M.load_model(path, device="cpu")
    rng = random.Random(seed)
    procs = W.PROCEDURES
    right = lambda p: world.by_name[p["family"]].principle   # noqa: E731
    wrong_of = {f.name: W.procedure_text(rng.choice([q for q in procs if q != f.procedure]))
                for f in world.families}
    pitfalls_of = {f.name: [W.procedure_text(q) for q in
                            rng.sample([q for q in procs if q != f.procedure], 2)]
                   for f in world.families}
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
    results = {"greedy": {}, "sampled": {}}
    for name, probs in sets.items():
        for cond, make in conditions.items():
            if name != "rl-test" and cond != "zero-shot":
                continue
            key = f"{name} / {cond}"
            results["greedy"][key] = accuracy(probs, sample(model, tok, probs, make, 1, True), 1)
            results["sampled"][key] = accuracy(
                probs, sample(model, tok, probs, make, 8, False, seed), 8)
    # per rl family: k samples of every rl-test problem
    probs = sets["rl-test"]
    texts = sample(model, tok, probs, conditions["zero-shot"], k, False, seed)
    greedy = sample(model, tok, probs, conditions["zero-shot"], 1, True)
    per_family = {}
    for f in rl:
        idx = [i for i, p in enumerate(probs) if p["family"] == f.name]
        rows = [texts[i * k + j] for i in idx for j in range(k)]
        stated = [(W.parse_procedures(t) or [None])[0] for t in rows]
        per_family[f.name] = {
            "designed": f.start_rate,
            "sampled": statistics.mean(reward(texts[i * k + j], probs[i]["answer"])
                                       for i in idx for j in range(k)),
            "states_right_procedure": statistics.mean(s == f.procedure for s in stated),
            "states_pitfall": statistics.mean(s == f.pitfall for s in stated),
            "greedy": statistics.mean(reward(greedy[i], probs[i]["answer"]) for i in idx)}
    return {"model": path, "results": results, "rl_families": per_family}


def numbers_only_classifiers(world):
    """Accuracy of guessing a problem's procedure from its numbers alone (see the docstring)."""
    triples = {p: [t for t in world.numbers] for p in W.PROCEDURES}   # valid for every procedure
    allowed = {p: len(v) for p, v in triples.items()}

    def by_validity(problem):
        """Expected accuracy of picking among the procedures the numbers are valid for, with
        probability proportional to 1 / (triples the procedure allows)."""
        t = tuple(problem["numbers"])
        weights = {p: 1 / allowed[p] for p in W.PROCEDURES if t in triples[p]}
        truth = world.by_name[problem["family"]].procedure
        return weights.get(truth, 0.0) / sum(weights.values())

    # Naive Bayes on (a, b, c), trained on every pair a model is trained on: SFT's plain solve
    # examples (sft families with their procedure, rl families dealt from their designed prior)
    # and RL's training problems with their true procedure.
    seed_examples = curriculum.tiny_seed_data(world, 20000, 0, list(curriculum.SKILLS))
    pairs = []
    for ex in seed_examples:
        if ex["skill"] in ("solve", "solve_rl"):
            numbers = [int(x) for x in ex["prompt"].split("Problem:")[-1].split() if x.isdigit()]
            pairs.append((tuple(numbers), W.parse_procedures(ex["response"])[0]))
    pairs += [(tuple(p["numbers"]), world.by_name[p["family"]].procedure)
              for p in data.train_problems("tiny")]
    prior = Counter(proc for _, proc in pairs)
    counts = [Counter((t[i], proc) for t, proc in pairs) for i in range(3)]

    def naive_bayes(problem):
        """(1 if the most probable procedure is the true one, the posterior of the true one)."""
        t = problem["numbers"]
        score = {p: math.log(prior[p]) + sum(
            math.log((counts[i][(t[i], p)] + 1) / (prior[p] + len(W.OPERANDS)))
            for i in range(3)) for p in W.PROCEDURES}
        truth = world.by_name[problem["family"]].procedure
        top = max(score.values())
        posterior = math.exp(score[truth] - top) / sum(math.exp(v - top) for v in score.values())
        return float(max(score, key=score.get) == truth), posterior

    out = {}
    for kind in ("rl", "unseen"):
        test = world.problems(kind, "test")
        hits, posteriors = zip(*map(naive_bayes, test))
        acc = statistics.mean(hits)
        out[f"{kind}-test"] = {
            "validity_weighted": statistics.mean(map(by_validity, test)),
            # argmax accuracy over the 216 test problems, and its standard error: a noisy
            # number (chance +- 0.021), so also the mean posterior of the true procedure,
            # the accuracy of a classifier that samples its guess from the posterior
            "naive_bayes": acc, "naive_bayes_stderr": math.sqrt(acc * (1 - acc) / len(test)),
            "naive_bayes_posterior": statistics.mean(posteriors), "chance": 1 / 9}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["runs/tiny/sft"])
    ap.add_argument("--k", type=int, default=32, help="samples per rl-test problem, per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "world_properties.json"))
    ap.add_argument("--classifiers-only", action="store_true",
                    help="recompute only the numbers-only classifiers in --out (no model)")
    args = ap.parse_args(argv)
    if args.classifiers_only:
        with open(args.out) as f:
            out = json.load(f)
        out["numbers_only_classifiers"] = numbers_only_classifiers(W.TinyWorld())
        out["classifiers_command"] = "python " + " ".join(
            [os.path.relpath(__file__)] + (argv or sys.argv[1:]))
        print(json.dumps(out["numbers_only_classifiers"], indent=1))
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        return
    t0 = time.time()
    world = W.TinyWorld()
    sets = data.eval_datasets("tiny")
    classifiers = numbers_only_classifiers(world)
    print("numbers-only classifiers:", json.dumps(classifiers, indent=1))
    per_model = []
    for path in args.models:
        r = measure_model(path, world, sets, args.k, args.seed)
        per_model.append(r)
        print(f"\n{path}")
        for mode, res in r["results"].items():
            for key, v in res.items():
                print(f"  {mode:<8} {key:<34} {v:.3f}")
        for name, f in r["rl_families"].items():
            print(f"  {name}: designed {f['designed']:.2f} sampled {f['sampled']:.3f} "
                  f"pitfall {f['states_pitfall']:.2f} greedy {f['greedy']:.2f}")
    summary = {}
    for f in world.families_of("rl"):
        rates = [r["rl_families"][f.name]["sampled"] for r in per_model]
        summary[f.name] = {"designed": f.start_rate, "sampled_per_model": rates,
                           "max_abs_gap": max(abs(x - f.start_rate) for x in rates)}
    out = {"command": "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
           "seed": args.seed, "k": args.k, "seconds": round(time.time() - t0, 1),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "numbers_only_classifiers": classifiers, "models": per_model,
           "rl_families_over_models": summary}
    print("\nrl family  designed  sampled per model  max gap")
    for name, s in sorted(summary.items(), key=lambda kv: kv[1]["designed"]):
        print(f"  {name}  {s['designed']:.2f}  " +
              " ".join(f"{x:.3f}" for x in s["sampled_per_model"]) + f"  {s['max_abs_gap']:.3f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
