"""The KL to the reference at step 0 under bf16 autocast, on SmolLM2-135M on the CPU.

LANPO's objective (arXiv 2510.16552, the GRPO objective it keeps) penalizes the KL of the
policy to the frozen SFT model; at step 0 the two are the same model, so the KL is 0. Under
bf16 autocast the policy (float32 weights) and the reference must then compute in exactly the
same arithmetic. This script samples a few rollouts from the policy and scores them with
(1) the reference as model.load_model(frozen=True) builds it (bf16 Linear weights, float32
elsewhere, the same autocast) and (2) the earlier scheme, the model in bf16 outright, and
reports the k3 KL per token of each and the memory of the parameters.

    python experiments/reference_kl.py      # writes experiments/results/reference_kl.json
"""
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from support import model as M  # noqa: E402


def k3(logp, ref, mask):
    d = ref - logp
    return float(((torch.exp(d) - d - 1) * mask).sum() / mask.sum())


def mib(model):
    return round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)


def main():
    torch.set_num_threads(1)
    d, f = M.smol_gguf()
    policy, tok = M.load_model(d, gguf_file=f, device="cpu", precision="bf16")
    ref, _ = M.load_model(d, gguf_file=f, device="cpu", precision="bf16", frozen=True)
    old, _ = M.load_model(d, gguf_file=f, device="cpu", precision="fp32")
    old.to(torch.bfloat16)   # the earlier reference: bf16 outright, no autocast
    questions = ["Tom has 3 apples and buys 4 more. How many apples does he have?",
                 "What is 12 times 7?"]
    torch.manual_seed(0)
    r = M.sample(policy, tok, questions, n=2, max_new_tokens=24)
    with torch.no_grad():
        lp = {name: M.token_logprobs(m, r.prompt_ids, r.response_ids, r.response_mask)
              for name, m in (("policy", policy), ("reference", ref), ("bf16_outright", old))}
    out = {"command": "python experiments/reference_kl.py", "model": "SmolLM2-135M-Instruct",
           "tokens": int(r.response_mask.sum()),
           "k3_per_token": {"reference": k3(lp["policy"], lp["reference"], r.response_mask),
                            "bf16_outright": k3(lp["policy"], lp["bf16_outright"],
                                                r.response_mask)},
           "logprobs_identical": {"reference": torch.equal(lp["policy"], lp["reference"]),
                                  "bf16_outright": torch.equal(lp["policy"],
                                                               lp["bf16_outright"])},
           "parameter_mib": {"policy_fp32": mib(policy), "reference": mib(ref),
                             "bf16_outright": mib(old)}}
    print(json.dumps(out, indent=1))
    with open(os.path.join(ROOT, "experiments", "results", "reference_kl.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
