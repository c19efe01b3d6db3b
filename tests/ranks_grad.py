"""One train.update on a fixed batch, as one rank of `torchrun`: the gradient it steps with.

    torchrun --nproc_per_node N tests/ranks_grad.py TINY_DIR OUT_DIR

For every setting of SETTINGS, rank r takes its share of the fixed batch's groups (ranks.share,
as train_step does), runs train.update on them with an SGD of learning rate 0 that keeps the
gradient it stepped with, and saves that gradient (after the all-reduce) as
OUT_DIR/grad_{setting}_rank{r}.pt. test_ranks.py runs the same settings in one process on the
whole batch (`one_process_gradient`) and compares.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import config  # noqa: E402
from support import model as M  # noqa: E402
import prompts  # noqa: E402
from support import ranks  # noqa: E402
import train  # noqa: E402
from support import world as W  # noqa: E402

G = 3
# response lengths of 4 groups of 3: the two halves of the batch hold different numbers of
# tokens (23 and 41), so normalizing by a rank's own count instead of the step's shows
LENGTHS = [1, 3, 8, 2, 5, 4, 7, 8, 8, 6, 4, 8]
ADVANTAGES = [1.0, -0.5, 0.3, -1.2, 0.7, 0.5, 0.9, -0.4, -0.5, 0.2, -1.0, 0.8]
# (name, aggregation, beta, logprob_tokens, advantages of the last two groups zeroed,
# score_context, inner_epochs): each aggregation with the KL term and small micro-batches; one
# where rank 1's groups carry no gradient at all (beta 0, zero advantages: it skips every row,
# and adds zeros); the corrected scoring (feedback-aware rows scored under the plain prompt,
# with importance weights); and two inner epochs (the gradient of the second)
SETTINGS = [(agg, agg, 0.1, 40, False, "prompt", 1)
            for agg in ("seq-mean", "token-mean", "seq-sum-norm")] \
    + [("rank1-idle", "token-mean", 0.0, 100_000, True, "prompt", 1),
       ("corrected", "token-mean", 0.1, 40, False, "corrected", 1),
       ("inner-epochs-2", "seq-mean", 0.1, 40, False, "prompt", 2)]


class ReadGrads(torch.optim.SGD):
    """SGD that keeps the gradient it stepped with (update() frees the gradients after)."""

    def step(self, closure=None):
        self.seen = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                               for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def batch(tok):
    """The fixed batch: 4 problems x G rows, prompts of two lengths, random response tokens."""
    problems = W.TinyWorld().problems("rl", "train")[:len(LENGTHS) // G]
    texts = [prompts.solve_prompt(p["question"]) if j % 2 else
             prompts.feedback_prompt(p["question"], ["add then mul"], ["sub then add"])
             for p in problems for j in range(G)]
    plain = M.encode_prompts(tok, [prompts.solve_prompt(p["question"])
                                   for p in problems for _ in range(G)])
    width = max(LENGTHS)
    ids = torch.randint(4, len(tok), (len(LENGTHS), width),
                        generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(width)[None] < torch.tensor(LENGTHS)[:, None]).float()
    return M.Rollouts(M.encode_prompts(tok, texts), ids, mask, [""] * len(LENGTHS),
                      torch.zeros(len(LENGTHS), dtype=torch.bool)), plain


def gradient(tiny_dir, setting, groups):
    """train.update's gradient on the rows of `groups` (problem indices) of the fixed batch."""
    _, aggregation, beta, budget, idle, score_context, epochs = setting
    model, tok = M.load_model(tiny_dir, device="cpu")
    ref = M.load_model(tiny_dir, device="cpu", frozen=True)[0].requires_grad_(False)
    a = config.build_parser().parse_args([])
    a.aggregation, a.beta, a.logprob_tokens, a.max_new_tokens = aggregation, beta, budget, 10
    a.max_grad_norm, a.temperature, a.inner_epochs, a.score_context = 1e9, 1.0, epochs, \
        score_context
    full, plain = batch(tok)
    rows = [g * G + j for g in groups for j in range(G)]
    adv = torch.tensor(ADVANTAGES)
    if idle:
        adv[2 * G:] = 0.0
    part = M.Rollouts([full.prompt_ids[i] for i in rows], full.response_ids[rows],
                      full.response_mask[rows], [""] * len(rows), full.truncated[rows])
    score_ids = ([plain[i] for i in rows] if score_context == "corrected" else part.prompt_ids)
    opt = ReadGrads(model.parameters(), lr=0.0)
    train.update(model, ref, opt, part, score_ids, adv[rows], a)
    return opt.seen


def one_process_gradient(tiny_dir, setting):
    return gradient(tiny_dir, setting, list(range(len(LENGTHS) // G)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    tiny_dir, out = sys.argv[1], sys.argv[2]
    ranks.init("cpu")
    for s in SETTINGS:
        mine = ranks.share(list(range(len(LENGTHS) // G)))
        torch.save(gradient(tiny_dir, s, mine), os.path.join(out, f"grad_{s[0]}_rank"
                                                                   f"{ranks.rank()}.pt"))
    ranks.close()
