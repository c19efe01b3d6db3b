"""The numerical half of LANPO: GRPO's group-relative advantages and its clipped, KL-penalized loss.

LANPO (arXiv 2510.16552): "language guides exploration, numerical rewards drive optimization".
The language half (contexts from the pool) is in prompts.py and pool.py; this half the paper
keeps unchanged from GRPO (DeepSeekMath, Shao et al. 2024, section 4.1): a group of G responses
per problem, each with a scalar reward; the advantage of response i is its reward normalized
within its group (no value model); minimize PPO's clipped surrogate (Schulman et al. 2017) plus
beta * KL(pi_theta || pi_ref), estimated per token by k3 (Schulman 2020).
Simplified relative to TRL or verl: outcome rewards only (every token of a response gets its
A_i; no GAE, no critic), no entropy bonus or asymmetric clipping, and no model here: the caller
passes per-token log-probs [N, T] and a mask (1 on response tokens and the EOS that ends them).
"""
import torch
from torch import Tensor

# How the per-token losses are averaged, the one place the literature disagrees: GRPO (Shao et
# al. 2024), DAPO (Yu et al. 2025), Dr. GRPO (Liu et al. 2025); see _aggregate.
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
    """A_i = (r_i - mean(group)) / (std(group) + eps); `scale=False` (Dr. GRPO, Liu et al.
    2025): A_i = r_i - mean(group). A group whose rewards are all equal gets exactly 0."""
    r = _grouped(rewards, group_size)
    # A_i = r_i - mean(r_group)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        # A_i = (r_i - mean(r_group)) / (std(r_group) + eps). The biased std (divide by G, not
        # G - 1 as TRL does): the two differ by a constant factor, a rescaled learning rate,
        # but this one is defined at G = 1 and gives a group's advantages unit variance.
        adv = adv / (r.std(dim=1, keepdim=True, correction=0) + eps)
    # all-equal groups: exactly 0 (r - mean can be an ulp off, and 0 / 0 would be NaN)
    flat = (r == r[:, :1]).all(dim=1, keepdim=True)
    return torch.where(flat, torch.zeros_like(adv), adv).reshape(-1)


def zero_std_fraction(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal. Their advantages are 0, so they add no
    gradient: when this is 1.0 the policy-gradient part of the loss is exactly 0."""
    r = _grouped(rewards, group_size)
    return int((r == r[:, :1]).all(dim=1).sum()) / max(r.shape[0], 1)  # exact: counted in python


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) on tokens sampled from pi_theta
    (Schulman 2020; DeepSeekMath's KL term): >= 0, and exactly 0 where the two agree."""
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    # k3 = exp(d) - d - 1, with exp(d) - 1 as expm1(d): no cancellation near d = 0, so
    # rounding cannot push a tiny value below 0
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
    """The GRPO loss of N responses padded to T tokens, and its statistics. logp, old_logp,
    ref_logp (None when beta = 0), mask: [N, T]; advantages: [N]. The gradient flows through
    logp alone; masked positions may hold anything (even -inf or nan). is_weight [N, T]: a
    detached per-token weight on each token's whole loss (support/controls.py). With
    micro-batches, pass every one the same max_len (see microbatch_weight).
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
        # (both terms are expectations under the scored policy)
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


def microbatch_weight(mask_mb: Tensor, n_seqs_total: int, n_tokens_total: int,
                      aggregation: str) -> float:
    """w such that sum over micro-batches of w * policy_loss(micro-batch) is the full batch's
    loss (and gradient): n_seqs_mb / n_seqs_total for the means over sequences, n_tokens_mb /
    n_tokens_total for token-mean. seq-sum-norm needs the same max_len in every micro-batch."""
    _check_aggregation(aggregation)
    if aggregation == "token-mean":
        n_tokens_mb = int(mask_mb.bool().sum().item())
        return n_tokens_mb / n_tokens_total if n_tokens_total > 0 else 0.0
    return mask_mb.shape[0] / n_seqs_total
