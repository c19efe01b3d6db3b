"""The numerical half of LANPO: GRPO's group-relative advantages and clipped, KL-penalized loss.

LANPO (arXiv 2510.16552) rests on one split: *language guides exploration, numerical rewards
drive optimization*. The language half (feedback from the experience pool placed in the prompt)
lives elsewhere (prompts.py and the pool). This file is the numerical half, and the paper keeps
it unchanged from GRPO (DeepSeekMath, Shao et al. 2024, section 4.1):

  1. sample a group of G responses per problem and score each with a scalar reward;
  2. advantage of response i = its reward normalized within its group (no value model);
  3. minimize PPO's clipped surrogate (Schulman et al. 2017) plus beta * KL(pi_theta || pi_ref),
     with KL estimated per token by k3 (Schulman, "Approximating KL divergence", 2020).

What this file simplifies, compared with trainers such as TRL or verl:
  - outcome rewards only: one scalar per response, and every token of that response gets the
    same advantage (no process supervision, no GAE, no critic);
  - no entropy bonus, dual clipping, or asymmetric clip ranges;
  - it never sees a model: the caller passes per-token log-probabilities of the sampled tokens
    ([N, T], padded) and a mask (1 for response tokens including the EOS that ends a response,
    0 for prompt and padding).

How the per-token losses are averaged is the one place where the literature disagrees, so
`aggregation` offers the three common choices:
  "seq-mean"      GRPO (Shao et al. 2024): mean over each response's tokens, then over responses;
  "token-mean"    DAPO (Yu et al. 2025): sum over every token of the batch / number of tokens;
  "seq-sum-norm"  Dr. GRPO (Liu et al. 2025): per-response sum / a constant max_len, then mean.
"""
import math

import torch
from torch import Tensor

AGGREGATIONS = ("seq-mean", "token-mean", "seq-sum-norm")

# k3 exponentiates a log-ratio. exp(20) ~ 5e8 is finite in float16/bf16/float32, so one extreme
# token (say logp = -1e4 on a token the reference likes) gives a large but finite penalty instead
# of inf. Outside the range the clamp passes no gradient; inside it (every sane case) it is exact.
LOG_RATIO_CLAMP = 20.0


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Rewards [N], laid out group by group, as [N // group_size, group_size]."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"cannot split {rewards.numel()} rewards into groups of {group_size}: N must be "
            f"n_groups * group_size, with the rewards of each group next to each other")
    r = rewards if rewards.is_floating_point() else rewards.float()
    return r.reshape(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-6) -> Tensor:
    """A_i = (r_i - mean(group)) / (std(group) + eps); without `scale`, A_i = r_i - mean(group).

    `scale=False` is Dr. GRPO's fix (Liu et al. 2025, `--no-scale-rewards`): dividing by the std
    up-weights groups that are almost all right or all wrong.

    Std choice: the *biased* (population) std, sum((r - mean)^2) / G. The common implementations
    (TRL, tiny-grpo) call torch's default, the unbiased std (divide by G - 1); for a fixed G the
    two differ only by the constant factor sqrt(G / (G - 1)) on every advantage, i.e. a rescaled
    learning rate, so neither is "the" GRPO. We take the biased one because it is defined for
    every G, including G = 1 (the unbiased one is 0/0 there), and because it makes the
    advantages of a group have exactly unit variance: a right/wrong pair (G = 2) gets +1 and -1.

    A group whose rewards are all equal carries no signal and gets exactly 0.0 (not r - mean,
    which can be off by an ulp, and never 0/0 = NaN).
    """
    r = _grouped(rewards, group_size)
    # A_i = r_i - mean(r_group)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        # A_i = (r_i - mean(r_group)) / (std(r_group) + eps), std biased (see docstring)
        adv = adv / (r.std(dim=1, keepdim=True, correction=0) + eps)
    flat = (r == r[:, :1]).all(dim=1, keepdim=True)
    return torch.where(flat, torch.zeros_like(adv), adv).reshape(-1)


def zero_std_fraction(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal. Their advantages are 0, so they add no
    gradient: when this is 1.0 the policy-gradient part of the loss is exactly 0."""
    r = _grouped(rewards, group_size)
    return int((r == r[:, :1]).all(dim=1).sum()) / max(r.shape[0], 1)  # exact: counted in python


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) on tokens sampled from pi_theta
    (Schulman 2020; DeepSeekMath's KL term): exp(ref - logp) - (ref - logp) - 1.

    It is >= 0 and exactly 0 where ref_logp == logp. We write exp(d) - 1 as expm1(d), which is
    the same number computed without cancellation near d = 0, so rounding cannot push a tiny
    value below 0. d is clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] (see above).
    """
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(d) - d


def _aggregate(x: Tensor, mask: Tensor, aggregation: str, max_len: int) -> Tensor:
    """Reduce per-token values x [N, T] (already 0 outside `mask`) to a scalar."""
    n_tokens = mask.sum(dim=1)  # |o_i|
    if aggregation == "seq-mean":  # GRPO: 1/N sum_i 1/|o_i| sum_t x_it (empty response: 0)
        return (x.sum(dim=1) / n_tokens.clamp(min=1)).mean()
    if aggregation == "token-mean":  # DAPO: sum_i sum_t x_it / sum_i |o_i|
        return x.sum() / n_tokens.sum().clamp(min=1)
    return (x.sum(dim=1) / max_len).mean()  # Dr. GRPO: 1/N sum_i sum_t x_it / max_len


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def policy_loss(logp: Tensor, old_logp: Tensor, ref_logp, advantages: Tensor, mask: Tensor,
                clip_eps: float = 0.2, beta: float = 0.04, aggregation: str = "seq-mean",
                max_len=None, is_weight=None):
    """GRPO loss for a batch of N responses padded to T tokens. Returns (loss, stats).

    logp, old_logp, ref_logp, mask: [N, T]. advantages: [N], the same on every token of a
    response. ref_logp may be None when beta == 0 (no reference model). Gradients flow only
    through logp. Whatever sits where mask == 0 (prompt, padding; even -inf or nan) is ignored.
    For "seq-sum-norm", max_len defaults to T; when the batch is split into micro-batches, pass
    the same max_len to every one of them (see microbatch_weight).

    is_weight [N, T] (optional): a per-token importance weight for responses that were sampled
    from another distribution than the one scored (see truncated_is_weight). It multiplies each
    token's whole loss (surrogate and KL: both are expectations under the scored policy) and is
    detached: it re-weights samples, it is not something to optimize.
    """
    _check_aggregation(aggregation)
    if logp.dim() != 2 or mask.shape != logp.shape or old_logp.shape != logp.shape:
        raise ValueError(f"logp, old_logp and mask must all be [N, T]; got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}], "
                         f"got {tuple(advantages.shape)}")
    if ref_logp is None and beta != 0:
        raise ValueError("ref_logp is None but beta != 0: the KL term needs the reference model")
    max_len = logp.shape[1] if max_len is None else max_len
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")

    m = mask.bool()
    zero = torch.zeros_like(logp)
    # Clean masked positions *before* any arithmetic: torch.where sends them no gradient, while
    # `x * mask` would turn a -inf or nan there into nan (nan * 0 = nan). Only logp keeps its graph.
    logp = torch.where(m, logp, zero)
    old_logp = torch.where(m, old_logp.detach(), zero)
    A = advantages.detach().to(logp.dtype)[:, None]  # [N, 1], broadcast over tokens

    # rho_t = pi_theta(o_t) / pi_old(o_t) = exp(logp - old_logp)   (== 1 with one inner epoch)
    ratio = torch.exp(logp - old_logp)
    # PPO (Schulman et al. 2017): surrogate = min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)
    unclipped = ratio * A
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * A
    surrogate = torch.minimum(unclipped, clipped)
    # k3 = exp(ref - logp) - (ref - logp) - 1   (Schulman 2020), 0 if there is no reference
    kl = zero if ref_logp is None else kl_k3(logp, torch.where(m, ref_logp.detach(), zero))
    # loss_t = -surrogate_t + beta * k3_t   (GRPO maximizes the objective; we minimize its negative)
    per_token = -surrogate + beta * kl
    if is_weight is not None:
        # E_{y ~ pi}[f(y)] = E_{y ~ mu}[w(y) f(y)]: the weight makes mu's samples count as pi's
        per_token = torch.where(m, is_weight.detach().to(logp.dtype), zero) * per_token
    per_token = torch.where(m, per_token, zero)
    # aggregate: seq-mean (GRPO) | token-mean (DAPO) | seq-sum-norm (Dr. GRPO), see _aggregate
    loss = _aggregate(per_token, m, aggregation, max_len)

    with torch.no_grad():
        n = m.sum().clamp(min=1)

        def token_mean(x):  # mean over response tokens, as a python float
            return (torch.where(m, x, zero).sum() / n).item()

        stats = {
            "loss": loss.item(),
            "pg_loss": _aggregate(torch.where(m, -surrogate, zero), m, aggregation, max_len).item(),
            "kl": token_mean(kl),
            "ratio": token_mean(ratio),
            "is_weight": 1.0 if is_weight is None else token_mean(is_weight.to(logp.dtype)),
            # clipping changed the objective: the clipped term is strictly the smaller one
            "clip_frac": token_mean((clipped < unclipped).to(logp.dtype)),
        }
    return loss, stats


def truncated_is_weight(target_logp: Tensor, behavior_logp: Tensor, cap: float) -> Tensor:
    """Per-token truncated importance weight w_t = min(pi(y_t | .) / mu(y_t | .), cap), detached.

    Used when a response y was sampled from a behavior policy mu (for LANPO: pi(. | x, c), the
    policy *with* a context) but the loss is about another policy pi (pi(. | x), without it).
    The exact correction is the sequence ratio prod_t pi/mu, whose variance explodes with length;
    the per-token ratio, capped from above, is the usual biased but low-variance compromise:
    truncated importance sampling (Ionides 2008, "Truncated importance sampling"), the truncated
    per-step weights min(rho_bar, pi/mu) of IMPALA's V-trace (Espeholt et al. 2018), and the
    per-token, cap-2 "TIS" correction of Yao et al. 2025 ("Your efficient RL framework secretly
    brings you off-policy RL training") for a sampler that differs from the trainer.
    w = exp(target - behavior), clamped to at most `cap`; positions outside the response may
    hold anything (the loss masks them)."""
    if cap <= 0:
        raise ValueError(f"the importance-weight cap must be positive, got {cap}")
    d = (target_logp.detach() - behavior_logp.detach()).clamp(max=math.log(cap))
    return torch.exp(d)


def microbatch_weight(mask_mb: Tensor, n_seqs_total: int, n_tokens_total: int,
                      aggregation: str) -> float:
    """Weight w of one micro-batch, so that sum over micro-batches of
    w * policy_loss(micro-batch)[0] equals the full-batch loss (and so do the gradients).

    seq-mean, seq-sum-norm: n_seqs_mb / n_seqs_total (both are means over sequences).
    token-mean:              n_tokens_mb / n_tokens_total (a mean over tokens).
    For seq-sum-norm every micro-batch must get the same max_len (e.g. the full batch's T, or
    the generation budget): the default, each micro-batch's own T, would break the identity.
    """
    _check_aggregation(aggregation)
    if aggregation == "token-mean":
        n_tokens_mb = int(mask_mb.bool().sum().item())
        return n_tokens_mb / n_tokens_total if n_tokens_total > 0 else 0.0
    return mask_mb.shape[0] / n_seqs_total
