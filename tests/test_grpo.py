"""grpo.py against slow reference loops written here in plain Python (floats, nested for loops).

Tensors are float64 (one k3 check is float32), so "matches the loop" means to ~1e-12; where
the spec asks for an exact value (0.0 advantages, rho == 1, zero gradient on clipped tokens)
the test checks equality.
"""
import math
import random

import pytest
import torch

from grpo import (AGGREGATIONS, group_advantages, kl_k3, microbatch_weight, policy_loss,
                  zero_std_fraction)

F64 = torch.float64


# --- reference loops --------------------------------------------------------------------------

def loop_advantages(rewards, group_size, scale, eps):
    out = []
    for g in range(len(rewards) // group_size):
        group = rewards[g * group_size:(g + 1) * group_size]
        mean = sum(group) / group_size
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / group_size)  # biased
        for r in group:
            if all(x == group[0] for x in group):
                out.append(0.0)
            elif scale:
                out.append((r - mean) / (std + eps))
            else:
                out.append(r - mean)
    return out


def loop_k3(lp, ref):
    d = max(-20.0, min(20.0, ref - lp))
    return math.exp(d) - d - 1.0


def loop_policy(logp, old, ref, adv, mask, eps, beta, agg, max_len=None):
    """Loss, d loss / d logp, and stats, for lists of lists of floats."""
    N, T = len(logp), len(logp[0])
    max_len = T if max_len is None else max_len
    n_tok = [sum(1 for t in range(T) if mask[i][t]) for i in range(N)]
    n_all = sum(n_tok)
    loss = pg = kl_sum = ratio_sum = clipped_count = 0.0
    grad = [[0.0] * T for _ in range(N)]
    for i in range(N):
        for t in range(T):
            if not mask[i][t]:
                continue
            if agg == "seq-mean":
                w = 1.0 / (N * n_tok[i])
            elif agg == "token-mean":
                w = 1.0 / n_all
            else:
                w = 1.0 / (N * max_len)
            a = adv[i]
            rho = math.exp(logp[i][t] - old[i][t])
            clip_rho = min(max(rho, 1 - eps), 1 + eps)
            surr = min(rho * a, clip_rho * a)
            clip_active = clip_rho * a < rho * a
            k = loop_k3(logp[i][t], ref[i][t]) if ref is not None else 0.0
            loss += w * (-surr + beta * k)
            pg += w * (-surr)
            # d(-surr)/dlogp = -a * rho on the unclipped branch, 0 where the clip is active;
            # d k3/dlogp = 1 - exp(ref - logp)
            g = 0.0 if clip_active else -a * rho
            if ref is not None:
                g += beta * (1.0 - math.exp(ref[i][t] - logp[i][t]))
            grad[i][t] = w * g
            kl_sum += k
            ratio_sum += rho
            clipped_count += clip_active
    n = max(n_all, 1)
    stats = {"loss": loss, "pg_loss": pg, "kl": kl_sum / n, "ratio": ratio_sum / n,
             "clip_frac": clipped_count / n}
    return loss, grad, stats


def random_batch(seed, N=6, T=7, spread=0.3, with_empty=True):
    """A batch with a prompt prefix (mask 0), responses of varied length ending in EOS (mask 1),
    padding (mask 0), and old/ref log-probs near logp so that some tokens are clipped."""
    rng = random.Random(seed)
    logp = [[-rng.uniform(0.05, 3.0) for _ in range(T)] for _ in range(N)]
    old = [[x + rng.uniform(-spread, spread) for x in row] for row in logp]
    ref = [[x + rng.uniform(-0.5, 0.5) for x in row] for row in logp]
    adv = [rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 2.0) for _ in range(N)]
    mask = []
    for i in range(N):
        start = rng.randint(0, 2)
        end = rng.randint(start + 1, T)  # response = [start, end), last one is the EOS
        if with_empty and i == 1:
            start = end = 0
        mask.append([1 if start <= t < end else 0 for t in range(T)])
    return logp, old, ref, adv, mask


def tensors(logp, old, ref, adv, mask):
    return (torch.tensor(logp, dtype=F64, requires_grad=True), torch.tensor(old, dtype=F64),
            None if ref is None else torch.tensor(ref, dtype=F64), torch.tensor(adv, dtype=F64),
            torch.tensor(mask))


def assert_close(actual, expected, tol=1e-12):
    assert abs(actual - expected) <= tol * max(1.0, abs(expected)), (actual, expected)


def assert_grad_close(grad, expected, tol=1e-12):
    assert torch.allclose(grad, torch.tensor(expected, dtype=F64), rtol=tol, atol=tol)


# --- advantages -------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("group_size", [1, 2, 4, 8])
def test_group_advantages_match_loop(scale, group_size):
    rng = random.Random(group_size)
    rewards = [rng.choice([0.0, 0.5, 1.0]) + rng.uniform(-0.1, 0.1) * (i % 3 == 0)
               for i in range(group_size * 5)]
    got = group_advantages(torch.tensor(rewards, dtype=F64), group_size, scale=scale, eps=1e-6)
    expected = loop_advantages(rewards, group_size, scale, 1e-6)
    assert got.shape == (len(rewards),)
    for a, e in zip(got.tolist(), expected):
        assert_close(a, e)


def test_right_wrong_pair_gets_plus_minus_one():
    # biased std of {0, 1} is 0.5, so the pair gets +-0.5 / (0.5 + eps), i.e. +-1 up to eps
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, eps=0.0)
    assert adv.tolist() == [1.0, -1.0, -1.0, 1.0]
    assert group_advantages(torch.tensor([1.0, 0.0]), 2, scale=False).tolist() == [0.5, -0.5]


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_zero_std_groups_are_exactly_zero(scale, eps):
    # 0.1 three times: its float mean is not exactly 0.1, so r - mean alone would not be 0
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, 3, scale=scale, eps=eps)
    assert not torch.isnan(adv).any()
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert adv[6:].tolist() == [0.0, 0.0, 0.0]
    assert (adv[3:6] != 0).all()
    # ints are accepted; group_size 1 means every group is flat
    assert group_advantages(torch.tensor([3, 1, 2]), 1, scale=scale).tolist() == [0.0, 0.0, 0.0]


def test_group_size_must_divide_n():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 0)
    with pytest.raises(ValueError):
        zero_std_fraction(torch.zeros(5), 2)


def test_zero_std_fraction_matches_loop():
    rng = random.Random(0)
    for group_size in (1, 2, 4):
        rewards = [float(rng.random() < 0.3) for _ in range(group_size * 10)]
        flat = 0
        for g in range(10):
            group = rewards[g * group_size:(g + 1) * group_size]
            flat += all(r == group[0] for r in group)
        got = zero_std_fraction(torch.tensor(rewards), group_size)
        assert isinstance(got, float) and got == flat / 10
    assert zero_std_fraction(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2) == 1.0
    assert zero_std_fraction(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2) == 0.5


def test_all_flat_groups_give_zero_policy_gradient():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    adv = group_advantages(rewards, 2)
    logp = torch.randn(4, 5, dtype=F64, requires_grad=True)
    loss, stats = policy_loss(logp, logp.detach() + 0.1, None, adv, torch.ones(4, 5), beta=0.0)
    loss.backward()
    assert loss.item() == 0.0 and stats["pg_loss"] == 0.0
    assert (logp.grad == 0).all()


# --- k3 ---------------------------------------------------------------------------------------

def test_k3_matches_loop_nonnegative_and_zero_where_equal():
    torch.manual_seed(0)
    logp = torch.randn(50, 40, dtype=F64) * 3
    ref = logp + torch.randn(50, 40, dtype=F64) * torch.rand(50, 40, dtype=F64) ** 4 * 5
    ref[::3] = logp[::3]  # equal rows
    ref[1, 1] = logp[1, 1] + 1e-9  # tiny differences must not round below 0
    k = kl_k3(logp, ref)
    assert (k >= 0).all()
    assert (k[::3] == 0).all()
    for i in range(0, 50, 7):
        for t in range(40):
            assert_close(k[i, t].item(), loop_k3(logp[i, t].item(), ref[i, t].item()), 1e-10)
    # float32 too, where exp(d) - d - 1 would cancel badly for small d
    small = torch.linspace(-1e-3, 1e-3, 10001)
    assert (kl_k3(torch.zeros_like(small), small) >= 0).all()


def test_k3_extreme_log_ratio_is_finite():
    logp = torch.tensor([-1e4, 0.0, -50.0], requires_grad=True)
    ref = torch.tensor([0.0, -1e4, 0.0])
    k = kl_k3(logp, ref)
    assert torch.isfinite(k).all()
    assert_close(k[0].item(), math.exp(20) - 21, 1e-6)
    k.sum().backward()
    assert torch.isfinite(logp.grad).all()


# --- the clipped surrogate --------------------------------------------------------------------

@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clip_branches_values_and_gradients(sign):
    rhos = [0.5, 0.8, 1.0, 1.2, 1.5]
    a = sign * 1.7
    old = [[-1.0] for _ in rhos]
    logp = [[-1.0 + math.log(r)] for r in rhos]
    adv = [a] * len(rhos)
    mask = [[1] for _ in rhos]
    lp, o, _, A, m = tensors(logp, old, None, adv, mask)
    loss, stats = policy_loss(lp, o, None, A, m, clip_eps=0.2, beta=0.0)
    loss.backward()
    ref_loss, ref_grad, ref_stats = loop_policy(logp, old, None, adv, mask, 0.2, 0.0, "seq-mean")
    assert_close(loss.item(), ref_loss)
    assert_grad_close(lp.grad, ref_grad)
    # A > 0: only rho = 1.5 is clipped; A < 0: only rho = 0.5. At the edges (0.8, 1.2) clipping
    # does not change the objective, so the gradient is the unclipped one.
    active = [r > 1.2 if a > 0 else r < 0.8 for r in rhos]
    for i, r in enumerate(rhos):
        g = lp.grad[i, 0].item()
        if active[i]:
            assert g == 0.0
        else:
            assert_close(g, -a * r / len(rhos))
    assert stats["clip_frac"] == sum(active) / len(rhos) == ref_stats["clip_frac"] == 0.2
    # each token alone: the loss is -clip(rho) * A where the clip is active, -rho * A elsewhere
    for i, r in enumerate(rhos):
        one, _ = policy_loss(lp[i:i + 1].detach(), o[i:i + 1], None, A[i:i + 1], m[i:i + 1],
                             beta=0.0)
        bound = 1.2 if r > 1 else 0.8
        assert_close(one.item(), -(bound if active[i] else r) * a)


def test_one_inner_epoch_ratio_is_exactly_one():
    logp, _, ref, adv, mask = random_batch(3)
    lp, _, r, A, m = tensors(logp, logp, ref, adv, mask)
    loss, stats = policy_loss(lp, lp.detach(), r, A, m)
    assert stats["ratio"] == 1.0 and stats["clip_frac"] == 0.0
    # with rho == 1 the seq-mean policy loss is -mean(A) over non-empty responses
    nonempty = [a for a, row in zip(adv, mask) if any(row)]
    assert_close(stats["pg_loss"], -sum(nonempty) / len(adv))
    loss.backward()
    _, ref_grad, _ = loop_policy(logp, logp, ref, adv, mask, 0.2, 0.04, "seq-mean")
    assert_grad_close(lp.grad, ref_grad)


# --- aggregation ------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_aggregation_matches_loop(aggregation, seed):
    batch = random_batch(seed)
    lp, o, r, A, m = tensors(*batch)
    loss, stats = policy_loss(lp, o, r, A, m, clip_eps=0.2, beta=0.04, aggregation=aggregation)
    loss.backward()
    ref_loss, ref_grad, ref_stats = loop_policy(*batch, 0.2, 0.04, aggregation)
    assert_close(loss.item(), ref_loss)
    assert_grad_close(lp.grad, ref_grad)
    assert ref_stats["clip_frac"] > 0  # the batch exercises the clip
    for key in ("loss", "pg_loss", "kl", "ratio", "clip_frac"):
        assert isinstance(stats[key], float)
        assert_close(stats[key], ref_stats[key])


def test_seq_sum_norm_max_len():
    batch = random_batch(4, T=7)
    lp, o, r, A, m = tensors(*batch)
    default, _ = policy_loss(lp, o, r, A, m, aggregation="seq-sum-norm")
    explicit, _ = policy_loss(lp, o, r, A, m, aggregation="seq-sum-norm", max_len=7)
    budget, _ = policy_loss(lp, o, r, A, m, aggregation="seq-sum-norm", max_len=100)
    assert default.item() == explicit.item()
    assert_close(budget.item(), loop_policy(*batch, 0.2, 0.04, "seq-sum-norm", 100)[0])
    assert_close(budget.item(), default.item() * 7 / 100)


def test_aggregations_differ_on_unequal_lengths():
    batch = random_batch(5)
    lp, o, r, A, m = tensors(*batch)
    values = {agg: policy_loss(lp, o, r, A, m, aggregation=agg)[0].item() for agg in AGGREGATIONS}
    assert len(set(values.values())) == 3


def test_unknown_aggregation_and_bad_inputs():
    lp, o, r, A, m = tensors(*random_batch(0))
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(lp, o, r, A, m, aggregation="mean")
    with pytest.raises(ValueError, match="aggregation"):
        microbatch_weight(m, 6, 10, "sum")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(lp, o, None, A, m, beta=0.04)
    with pytest.raises(ValueError):
        policy_loss(lp, o, r, A[:3], m)


def test_no_reference_model_when_beta_is_zero():
    batch = random_batch(6)
    lp, o, _, A, m = tensors(*batch)
    loss, stats = policy_loss(lp, o, None, A, m, beta=0.0)
    assert stats["kl"] == 0.0
    assert_close(loss.item(), loop_policy(batch[0], batch[1], None, batch[3], batch[4],
                                          0.2, 0.0, "seq-mean")[0])


# --- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_garbage_in_masked_positions_changes_nothing(aggregation):
    batch = random_batch(7)
    lp, o, r, A, m = tensors(*batch)
    loss, stats = policy_loss(lp, o, r, A, m, aggregation=aggregation)
    loss.backward()
    off = m == 0
    assert off.any() and (m == 1).any()
    for garbage in (float("nan"), float("-inf"), float("inf"), 1e30):
        lp2 = lp.detach().masked_fill(off, garbage).requires_grad_()
        o2, r2 = o.masked_fill(off, -garbage), r.masked_fill(off, garbage)
        loss2, stats2 = policy_loss(lp2, o2, r2, A, m, aggregation=aggregation)
        loss2.backward()
        assert loss2.item() == loss.item()
        assert stats2 == stats
        assert torch.equal(lp2.grad, lp.grad)
        assert (lp2.grad[off] == 0).all()


def test_eos_token_carries_loss_and_gradient():
    # prompt (0 0), response (1 1 1) whose last token is the EOS, padding (0 0)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])
    eos = 4
    logp = torch.full((1, 7), -1.0, dtype=F64, requires_grad=True)
    old = torch.full((1, 7), -1.05, dtype=F64)
    A = torch.tensor([0.7], dtype=F64)
    loss, _ = policy_loss(logp, old, None, A, mask, beta=0.0)
    loss.backward()
    assert logp.grad[0, eos] != 0
    assert (logp.grad[0, [0, 1, 5, 6]] == 0).all()
    # the EOS counts in the length: 3 response tokens
    assert_close(loss.item(), -0.7 * math.exp(0.05))
    moved = logp.detach().clone()
    moved[0, eos] = -0.9
    assert policy_loss(moved, old, None, A, mask, beta=0.0)[0].item() != loss.item()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_empty_responses_contribute_zero_and_no_nan(aggregation):
    batch = random_batch(8)  # response 1 is empty
    lp, o, r, A, m = tensors(*batch)
    assert m[1].sum() == 0
    loss, _ = policy_loss(lp, o, r, A, m, aggregation=aggregation)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert (lp.grad[1] == 0).all()
    # changing the empty response's advantage changes nothing
    A2 = A.clone()
    A2[1] = 1e6
    assert policy_loss(lp, o, r, A2, m, aggregation=aggregation)[0].item() == loss.item()
    # a batch with no response token at all: loss 0, finite stats
    lp0 = torch.randn(3, 4, dtype=F64, requires_grad=True)
    loss0, stats0 = policy_loss(lp0, lp0.detach(), lp0.detach(), torch.ones(3, dtype=F64),
                                torch.zeros(3, 4), aggregation=aggregation)
    loss0.backward()
    assert loss0.item() == 0.0 and (lp0.grad == 0).all()
    assert all(math.isfinite(v) for v in stats0.values())


# --- gradients and micro-batches --------------------------------------------------------------

def test_gradient_flows_only_through_logp():
    lp, _, _, _, m = tensors(*random_batch(9))
    old = (lp.detach() + 0.1).requires_grad_()
    ref = (lp.detach() - 0.2).requires_grad_()
    adv = torch.linspace(-1, 1, 6, dtype=F64, requires_grad=True)
    loss, _ = policy_loss(lp, old, ref, adv, m)
    loss.backward()
    assert lp.grad is not None and lp.grad.abs().sum() > 0
    assert old.grad is None and ref.grad is None and adv.grad is None


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_microbatch_weights_reproduce_full_batch(aggregation):
    batch = random_batch(10, N=7, T=9)
    lp, o, r, A, m = tensors(*batch)
    full, _ = policy_loss(lp, o, r, A, m, aggregation=aggregation)
    full.backward()
    full_grad = lp.grad.clone()
    lp.grad = None
    n_seqs, n_tokens = m.shape[0], int(m.sum())
    total = 0.0
    for lo, hi in [(0, 1), (1, 4), (4, 7)]:  # uneven; the empty response sits in the first 3
        loss_mb, _ = policy_loss(lp[lo:hi], o[lo:hi], r[lo:hi], A[lo:hi], m[lo:hi],
                                 aggregation=aggregation, max_len=m.shape[1])
        w = microbatch_weight(m[lo:hi], n_seqs, n_tokens, aggregation)
        (loss_mb * w).backward()
        total += (loss_mb * w).item()
    assert_close(total, full.item())
    assert torch.allclose(lp.grad, full_grad, rtol=1e-12, atol=1e-14)


def test_microbatch_weight_values():
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert microbatch_weight(m, 8, 20, "seq-mean") == 2 / 8
    assert microbatch_weight(m, 8, 20, "seq-sum-norm") == 2 / 8
    assert microbatch_weight(m, 8, 20, "token-mean") == 2 / 20
    assert microbatch_weight(torch.zeros(2, 3), 2, 0, "token-mean") == 0.0
