"""The objectives (DPO, IPO, KTO, MaPO, SFT) against values computed by hand (docs/TRAINING.md)."""

import math

import pytest
import torch

from train.loss import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    mapo_loss,
    per_sample_error,
    scaled_gradient,
    sft_loss,
    winner_safe_scale,
)


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


def test_a_soft_label_weighs_both_orders_as_the_conservative_formula_says():
    # inside = [1, -1] (as above); p = [0.9, 0.5]:
    # pair 1: -(0.9 ln s(1) + 0.1 ln s(-1)); pair 2 (a tie): -(ln s(-1) + ln s(1)) / 2
    def softplus(x: float) -> float:  # -ln sigmoid(-x)
        return math.log1p(math.exp(x))

    terms = dpo_loss(t(0.1, 0.4), t(0.3, 0.2), t(0.2, 0.3), t(0.2, 0.3), beta=10,
                     preferred_share=t(0.9, 0.5))
    first = 0.9 * softplus(-1.0) + 0.1 * softplus(1.0)
    tie = (softplus(1.0) + softplus(-1.0)) / 2
    assert terms.loss.item() == pytest.approx((first + tie) / 2, rel=1e-6)
    hard = dpo_loss(t(0.1, 0.4), t(0.3, 0.2), t(0.2, 0.3), t(0.2, 0.3), beta=10)
    assert dpo_loss(t(0.1, 0.4), t(0.3, 0.2), t(0.2, 0.3), t(0.2, 0.3), beta=10,
                    preferred_share=1.0).loss.item() == hard.loss.item()  # p = 1: the paper's
    # a tie's loss is the same whichever image is called preferred, and its gradient
    # pulls the margin toward 0
    model_w = t(0.1).requires_grad_()
    tie_terms = dpo_loss(model_w, t(0.3), t(0.2), t(0.2), beta=10, preferred_share=0.5)
    swapped = dpo_loss(t(0.3), model_w.detach(), t(0.2), t(0.2), beta=10, preferred_share=0.5)
    assert tie_terms.loss.item() == pytest.approx(swapped.loss.item())
    tie_terms.loss.backward()
    assert model_w.grad.item() < 0  # inside > 0 here: a descent step raises the winner's error


def test_smpo_s_form_scales_the_logit_by_the_pair_s_confidence():
    # SmPO's train.py: -logsigmoid(-0.5 beta (2 p - 1) 10 (model_diff - ref_diff)), that is
    # DPO's inside x scaled by 10 (2p - 1); inside = [1, -1] as above, p = [0.9, 0.5]
    terms = dpo_loss(t(0.1, 0.4), t(0.3, 0.2), t(0.2, 0.3), t(0.2, 0.3), beta=10,
                     preferred_share=t(0.9, 0.5), share_loss="smpo")
    scaled = 10 * (2 * 0.9 - 1) * 1.0  # 8
    expected = (math.log1p(math.exp(-scaled)) + math.log(2)) / 2  # a coin flip: ln 2, flat
    assert terms.loss.item() == pytest.approx(expected, rel=1e-6)
    assert terms.inside.tolist() == pytest.approx([1.0, -1.0])  # logged unscaled
    model_w = t(0.1, 0.4).requires_grad_()
    dpo_loss(model_w, t(0.3, 0.2), t(0.2, 0.3), t(0.2, 0.3), beta=10,
             preferred_share=t(0.9, 0.5), share_loss="smpo").loss.backward()
    assert model_w.grad[0].item() > 0 and model_w.grad[1].item() == 0  # the flip: no pull


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


# -- IPO: (rho - 1/(2 beta))^2 with rho = (r_w - r_l) - (e_w - e_l) ---------------------


def test_ipo_at_initialisation_is_the_squared_target_margin():
    errors = t(0.3, 0.1, 0.7)
    terms = ipo_loss(errors, errors.flip(0), errors, errors.flip(0), beta=10)
    assert terms.loss.item() == pytest.approx((1 / 20) ** 2, rel=1e-6)  # 0.0025
    assert terms.margin.item() == 0.0 and terms.accuracy.item() == 0.5


def test_ipo_matches_hand_computed_values_and_a_swap_moves_away_from_the_target():
    # rho = (0.4 - 0.4) - (0.3 - 0.5) = 0.2; target 1/(2*10) = 0.05: (0.15)^2 = 0.0225
    terms = ipo_loss(t(0.3), t(0.5), t(0.4), t(0.4), beta=10)
    assert terms.loss.item() == pytest.approx(0.0225, rel=1e-5)
    assert terms.inside.item() == pytest.approx(0.5 * 10 * 0.2)  # DPO's margin, logged alike
    # swapped: rho = -0.2, (-0.25)^2 = 0.0625
    swapped = ipo_loss(t(0.5), t(0.3), t(0.4), t(0.4), beta=10)
    assert swapped.loss.item() == pytest.approx(0.0625, rel=1e-5)
    assert swapped.accuracy.item() == 0.0


def test_ipo_pulls_the_margin_to_its_target_from_either_side():
    below = t(0.30).requires_grad_()  # rho = 0 < 0.05: lower the winner's error
    ipo_loss(below, t(0.30), t(0.30), t(0.30), beta=10).loss.backward()
    assert below.grad.item() == pytest.approx(2 * (0 - 0.05) * -1)  # d/d e_w = -2(rho - c)
    above = t(0.10).requires_grad_()  # rho = 0.2 > 0.05: the winner's error may rise
    ipo_loss(above, t(0.30), t(0.30), t(0.30), beta=10).loss.backward()
    assert above.grad.item() == pytest.approx(-2 * (0.2 - 0.05))


# -- MaPO: mean(e_w) - beta * mean(logsigmoid(T (f(e_w) - f(e_l)))), f(e) = s e/(e^(s e)-1)


def mapo_by_hand(e_w: float, e_l: float, beta: float, s: float, T: int) -> float:
    def f(e):
        return s * e / (math.exp(s * e) - 1)

    z = T * (f(e_w) - f(e_l))
    return e_w - beta * -math.log1p(math.exp(-z))


def test_mapo_matches_hand_computed_values():
    # f(0.2) = 0.1/(e^0.1 - 1) = 0.950833, f(0.4) = 0.2/(e^0.2 - 1) = 0.903331
    # z = 10 * 0.047502 = 0.47502; logsigmoid(z) = -0.48359; loss = 0.2 + 0.1 * 0.48359
    terms = mapo_loss(t(0.2), t(0.4), beta_mapo=0.1, snr=0.5, num_train_timesteps=10)
    assert terms.loss.item() == pytest.approx(0.248359, abs=1e-5)
    assert terms.loss.item() == pytest.approx(mapo_by_hand(0.2, 0.4, 0.1, 0.5, 10), rel=1e-5)
    assert terms.margin.item() == pytest.approx(0.047502, abs=1e-5)
    assert terms.accuracy.item() == 1.0  # the winner denoised better


def test_mapo_with_equal_errors_is_the_winner_loss_plus_beta_ln2():
    errors = t(0.3, 0.1, 0.7)
    terms = mapo_loss(errors, errors, beta_mapo=0.1, snr=0.5, num_train_timesteps=1000)
    assert terms.loss.item() == pytest.approx(errors.mean().item() + 0.1 * math.log(2),
                                              rel=1e-6)
    assert terms.accuracy.item() == 0.5


def test_mapo_swap_flips_the_margin_and_the_gradient_favours_the_winner():
    forward = mapo_loss(t(0.2, 0.5), t(0.4, 0.3), 0.1, 0.5, 10)
    swapped = mapo_loss(t(0.4, 0.3), t(0.2, 0.5), 0.1, 0.5, 10)
    assert torch.allclose(swapped.log_odds, -forward.log_odds)
    e_w, e_l = t(0.3).requires_grad_(), t(0.3).requires_grad_()
    mapo_loss(e_w, e_l, 0.1, 0.5, 1000).loss.backward()
    assert e_w.grad.item() > 0 and e_l.grad.item() < 0  # descent: winner's error down


def test_mapo_is_finite_at_zero_error_and_in_fp32():
    terms = mapo_loss(torch.zeros(2, dtype=torch.bfloat16), t(0.1, 0.0), 0.1, 0.5, 1000)
    assert torch.isfinite(terms.loss) and terms.loss.dtype == torch.float32


# -- the winner-safe switch: lambda = clip((1 - mu) |g_w|^2 / (g_l . g_w), 0, 1) ----------


def test_winner_safe_scale_matches_hand_computed_values():
    r_w = torch.tensor([[1.0, 0.0]])
    # g_l . g_w = 1, |g_w|^2 = 1: (1 - 0.5) * 1 / 1 = 0.5
    assert winner_safe_scale(r_w, torch.tensor([[1.0, 1.0]]), mu=0.5).item() == 0.5
    # opposed gradients: nothing to hold back
    assert winner_safe_scale(r_w, torch.tensor([[-1.0, 0.0]]), mu=0.5).item() == 1.0
    # a small aligned loser gradient would allow 10: clipped to 1
    assert winner_safe_scale(r_w, torch.tensor([[0.1, 0.0]]), mu=0.0).item() == 1.0
    # mu = 1 asks the step to lower the winner's error by all of |g_w|^2: no loser at all
    assert winner_safe_scale(r_w, torch.tensor([[1.0, 1.0]]), mu=1.0).item() == 0.0


def test_winner_safe_scale_keeps_the_winners_error_from_rising_to_first_order():
    generator = torch.Generator().manual_seed(0)
    for mu in (0.0, 0.5, 0.9):
        for _ in range(50):
            r_w, r_l = torch.randn(2, 3, 4, 4, generator=generator)
            r_l = r_l + 2 * r_w  # often aligned with the winner's
            scale = winner_safe_scale(r_w[None], r_l[None], mu)
            step = -r_w + scale * r_l  # descent on e_w, ascent on e_l, as DPO's loss asks
            assert torch.dot(step.flatten(), r_w.flatten()) <= -mu * r_w.pow(2).sum() + 1e-4


def test_scaled_gradient_keeps_the_value_and_scales_the_gradient():
    x = t(2.0, 3.0).requires_grad_()
    y = scaled_gradient(x, torch.tensor(0.25))
    assert y.tolist() == [2.0, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.25, 0.25]


# -- KTO: mean(1 - sigmoid(y * beta * (g - Q))), g = r - e, Q = max(0, mean(g)) ------------


def test_kto_at_initialisation_is_one_half():
    errors = t(0.3, 0.1, 0.7, 0.2)
    terms = kto_loss(errors, errors, torch.tensor([True, False, True, False]), beta=1000)
    assert terms.loss.item() == pytest.approx(0.5)
    assert terms.accuracy.item() == 0.5 and terms.margin.item() == 0.0


def test_kto_matches_hand_computed_values():
    # g = [0.1, -0.1], Q = max(0, 0) = 0; y * beta * g = [1, 1]: 1 - sigmoid(1) = 0.268941
    liked = torch.tensor([True, False])
    terms = kto_loss(t(0.2, 0.4), t(0.3, 0.3), liked, beta=10)
    assert terms.loss.item() == pytest.approx(1 - 1 / (1 + math.exp(-1)), rel=1e-6)
    assert terms.reward_liked.item() == pytest.approx(1.0)
    assert terms.reward_disliked.item() == pytest.approx(-1.0)
    assert terms.accuracy.item() == 1.0
    # g = [0.2, 0], Q = 0.1: the reference point moves both by -0.1, giving [1, 1] again
    shifted = kto_loss(t(0.1, 0.3), t(0.3, 0.3), liked, beta=10)
    assert shifted.loss.item() == pytest.approx(terms.loss.item(), rel=1e-6)
    assert shifted.reference_point.item() == pytest.approx(1.0)
    # the labels swapped: sigmoid(1) = 0.731059
    swapped = kto_loss(t(0.2, 0.4), t(0.3, 0.3), ~liked, beta=10)
    assert swapped.loss.item() == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)


def test_kto_lowers_liked_errors_and_raises_disliked_ones():
    errors = t(0.3, 0.3).requires_grad_()
    kto_loss(errors, t(0.3, 0.3), torch.tensor([True, False]), beta=10).loss.backward()
    assert errors.grad[0] > 0 and errors.grad[1] < 0  # descent: liked down, disliked up
