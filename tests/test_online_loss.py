"""DiffusionNFT's loss and the group statistics of online RL (train/loss.py), against
formulas derived here independently of its code.

With x_t = (1 - s) x0 + s eps and the velocity target u = eps - x0, a clean estimate
x_t - s v misses x0 by s (u - v). So the weighted error of a policy velocity v' is
s^2 mean((u - v')^2) / (s mean|u - v'|) = s mean((u - v')^2) / mean|u - v'|.
"""

import pytest
import torch

from train.loss import group_advantages, nft_loss, optimality


def case(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(n, 2, 3, 3, generator=g), torch.randn(n, 2, 3, 3, generator=g)
    s = torch.rand(n, generator=g) * 0.8 + 0.1
    noisy = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps
    v = torch.randn(n, 2, 3, 3, generator=g)
    return x0, eps, s, noisy, v


def weighted_error(s, u, v):
    miss = (u - v).flatten(1)
    return s * miss.pow(2).mean(1) / miss.abs().mean(1)


def test_nft_loss_is_the_derived_formula():
    x0, eps, s, noisy, v = case()
    old, ref = v + 0.1, v - 0.2
    r, beta, clip = torch.tensor([1.0, 0.25, 0.0]), 0.5, 5.0
    terms = nft_loss(v, old, ref, noisy, x0, s, r, beta, clip)
    u = eps - x0
    positive = weighted_error(s, u, beta * v + (1 - beta) * old)
    negative = weighted_error(s, u, (1 + beta) * old - beta * v)
    expected = clip * (r * positive + (1 - r) * negative) / beta
    assert terms.policy.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert terms.kl.tolist() == pytest.approx([0.04] * 3, rel=1e-5)
    assert terms.old_deviation.tolist() == pytest.approx([0.01] * 3, rel=1e-5)


def test_on_policy_an_optimality_of_one_half_teaches_nothing():
    x0, _, s, noisy, v = case(1)
    v = v.requires_grad_()
    terms = nft_loss(v, v.detach(), v.detach(), noisy, x0, s, torch.full((3,), 0.5), 1.0, 5.0)
    terms.policy.sum().backward()
    assert v.grad.abs().max().item() < 1e-6


def test_a_good_sample_pulls_the_velocity_to_it_and_a_bad_one_pushes_it_away():
    x0, eps, s, noisy, v = case(2)
    u = eps - x0
    for r, sign in ((1.0, -1), (0.0, 1)):
        velocity = v.clone().requires_grad_()
        terms = nft_loss(velocity, v, v, noisy, x0, s, torch.full((3,), r), 1.0, 5.0)
        terms.policy.sum().backward()
        step = -velocity.grad  # a small step down the loss
        # d/d(step) of |u - v|^2 along the step: negative means v moves toward u
        change = (-2 * (u - v) * step).flatten(1).sum(1)
        assert (sign * change > 0).all(), (r, change)


def test_group_advantages_standardise_within_each_prompt_and_skip_flat_groups():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 4.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    advantages, live = group_advantages(rewards, groups, eps=0.0)
    spread = (2 / 3) ** 0.5  # population std of 1, 2, 3
    assert advantages.tolist() == pytest.approx([-1 / spread, 0, 1 / spread, 0, 0, 0, -1, 1])
    assert live.tolist() == [True, True, True, False, False, False, True, True]


def test_optimality_maps_clipped_advantages_linearly_onto_zero_to_one():
    r = optimality(torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 10.0]), clip=5.0)
    assert r.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
