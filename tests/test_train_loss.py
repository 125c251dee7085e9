"""The Diffusion-DPO loss against values computed by hand (docs/TRAINING.md)."""

import math

import pytest
import torch

from train.loss import dpo_loss, per_sample_error, sft_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_loss_is_ln2_when_the_model_is_its_reference():
    errors = t(0.3, 0.1, 0.7)
    terms = dpo_loss(errors, errors.flip(0), errors, errors.flip(0), beta=5000)
    assert terms.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert terms.margin.item() == 0.0
    assert terms.accuracy.item() == 0.5  # no pair decided yet: each counts one half


def test_loss_matches_hand_computed_values():
    # pair 1: inside = -0.5*10*((0.1-0.3) - (0.2-0.2)) = 1.0
    # pair 2: inside = -0.5*10*((0.4-0.2) - (0.3-0.3)) = -1.0
    terms = dpo_loss(t(0.1, 0.4), t(0.3, 0.2), t(0.2, 0.3), t(0.2, 0.3), beta=10)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert terms.loss.item() == pytest.approx(expected, rel=1e-6)
    assert terms.inside.tolist() == pytest.approx([1.0, -1.0])
    assert terms.accuracy.item() == 0.5
    # implicit rewards: -0.5*beta*(model - ref) per image
    assert terms.reward_preferred.item() == pytest.approx((0.5 + -0.5) / 2, abs=1e-6)
    assert terms.reward_rejected.item() == pytest.approx((-0.5 + 0.5) / 2, abs=1e-6)


def test_the_mean_is_outside_the_logsigmoid():
    # inside = [4, -4]: mean(-logsigmoid) = 2.018..., while -logsigmoid(mean) would be ln 2
    terms = dpo_loss(t(0.0, 0.8), t(0.8, 0.0), t(0.4, 0.4), t(0.4, 0.4), beta=10)
    assert terms.inside.tolist() == pytest.approx([4.0, -4.0])
    expected = (math.log1p(math.exp(-4.0)) + math.log1p(math.exp(4.0))) / 2
    assert terms.loss.item() == pytest.approx(expected, rel=1e-6)


def test_swapping_winner_and_loser_flips_the_margin():
    model_w, model_l, ref_w, ref_l = t(0.1, 0.5), t(0.3, 0.2), t(0.25, 0.3), t(0.2, 0.35)
    forward = dpo_loss(model_w, model_l, ref_w, ref_l, beta=100)
    swapped = dpo_loss(model_l, model_w, ref_l, ref_w, beta=100)
    assert torch.allclose(swapped.inside, -forward.inside)
    assert swapped.margin.item() == pytest.approx(-forward.margin.item())
    assert swapped.accuracy.item() == pytest.approx(1 - forward.accuracy.item())


def test_gradient_lowers_the_winners_error_relative_to_the_reference():
    model_w = t(0.2, 0.3).requires_grad_()
    model_l = t(0.2, 0.3).requires_grad_()
    dpo_loss(model_w, model_l, t(0.2, 0.3), t(0.2, 0.3), beta=5000).loss.backward()
    # gradient descent moves against the gradient: the winner's error down, the loser's up
    assert (model_w.grad > 0).all() and (model_l.grad < 0).all()
    # at initialisation the slope is 0.5 * beta * sigmoid(0) / pairs = 625 per pair
    assert model_w.grad.tolist() == pytest.approx([625.0, 625.0])


def test_the_loss_is_computed_in_fp32_whatever_the_inputs():
    half = torch.tensor([0.1, 0.2], dtype=torch.bfloat16)
    terms = dpo_loss(half, half.flip(0), half, half.flip(0), beta=5000)
    assert terms.loss.dtype == torch.float32


def test_per_sample_error_and_sft():
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]])
    errors = per_sample_error(prediction, target)
    assert errors.tolist() == [1.0, 1.0]  # (4*1)/4 and (4+0+0+0)/4
    assert sft_loss(t(1.0, 3.0)).item() == 2.0
