"""The Diffusion-DPO objective and its SFT baseline, as pure functions (docs/TRAINING.md).

With the same noise and timestep for the winner w and the loser l, each network's
per-sample error is e = mean over C, H, W of (eps_pred - eps)^2. Then

    inside = -0.5 * beta * ((e_w - e_l) - (r_w - r_l))      (e: trained model, r: reference)
    loss   = mean(-logsigmoid(inside))

in fp32 - the official code's form, so beta is in its convention (paper: 5000; diffusers'
script writes 2500 without the 0.5, the same thing). The mean is outside the logsigmoid
(putting it inside is the bug of diffusers#6702). At initialisation, model = reference,
inside = 0 and the loss is ln 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample over all but the batch dimension, in fp32."""
    diff = prediction.float() - target.float()
    return diff.pow(2).mean(dim=tuple(range(1, diff.dim())))


@dataclass
class DPOTerms:
    """The loss and what a person watches to tell whether DPO is healthy.

    Implicit rewards are beta/2 times how much more the model lowered an image's error
    than the reference did: the winner's should rise above the loser's (the margin).
    """

    loss: torch.Tensor  # scalar, differentiable
    inside: torch.Tensor  # per pair, detached
    accuracy: torch.Tensor  # share of pairs with inside > 0 (ties in inside count 0.5)
    reward_preferred: torch.Tensor  # mean implicit reward of the winners
    reward_rejected: torch.Tensor
    margin: torch.Tensor  # mean(reward_preferred - reward_rejected) = mean(inside)


def dpo_loss(
    model_preferred: torch.Tensor,
    model_rejected: torch.Tensor,
    ref_preferred: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DPOTerms:
    """Diffusion-DPO from per-sample errors (each of shape [pairs])."""
    model_preferred, model_rejected = model_preferred.float(), model_rejected.float()
    ref_preferred, ref_rejected = ref_preferred.float().detach(), ref_rejected.float().detach()
    reward_preferred = -0.5 * beta * (model_preferred - ref_preferred)
    reward_rejected = -0.5 * beta * (model_rejected - ref_rejected)
    inside = reward_preferred - reward_rejected
    loss = -F.logsigmoid(inside).mean()
    inside = inside.detach()
    accuracy = (inside > 0).float().mean() + 0.5 * (inside == 0).float().mean()
    return DPOTerms(
        loss=loss, inside=inside, accuracy=accuracy,
        reward_preferred=reward_preferred.detach().mean(),
        reward_rejected=reward_rejected.detach().mean(), margin=inside.mean(),
    )


def sft_loss(model_preferred: torch.Tensor) -> torch.Tensor:
    """The paper's SFT baseline: plain denoising loss on the preferred images only."""
    return model_preferred.float().mean()
