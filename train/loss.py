"""The preference objectives and the SFT baseline, as pure functions (docs/TRAINING.md).

With the same noise and timestep for the winner w and the loser l, each network's
per-sample error is e = mean over C, H, W of (eps_pred - eps)^2. Then

    inside = -0.5 * beta * ((e_w - e_l) - (r_w - r_l))      (e: trained model, r: reference)
    loss   = mean(-logsigmoid(inside))

in fp32 - the official code's form, so beta is in its convention (paper: 5000; diffusers'
script writes 2500 without the 0.5, the same thing). The mean is outside the logsigmoid
(putting it inside is the bug of diffusers#6702). At initialisation, model = reference,
inside = 0 and the loss is ln 2.

IPO and MaPO train on the same pairs and errors: IPO on the same margin with a squared
loss (`ipo_loss`), MaPO with no reference model at all (`mapo_loss`); KTO on single images
each liked or disliked (`kto_loss`), so it also learns from votes that are not pairs.
The winner-safe switch of the DPO family (`winner_safe_scale`) scales the loser's
gradient so that a step does not raise the winner's error.
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
    preferred_share: torch.Tensor | float = 1.0,
    share_loss: str = "conservative",
) -> DPOTerms:
    """Diffusion-DPO from per-sample errors (each of shape [pairs]).

    `preferred_share` p (per pair, or one for all) is the probability that the "preferred"
    image is the better: the loss is -(p log sigmoid(x) + (1 - p) log sigmoid(-x)), the
    conservative form (cDPO; p = 1 is the paper's loss, a tie is p = 1/2), which pulls a
    pair's margin toward logit(p). `share_loss` "smpo" is SmPO's form instead (its
    train.py: -log sigmoid(10 (2p - 1) x)): the logit scaled by the pair's confidence, so
    a coin flip is ignored and no pair is ever pushed back."""
    model_preferred, model_rejected = model_preferred.float(), model_rejected.float()
    ref_preferred, ref_rejected = ref_preferred.float().detach(), ref_rejected.float().detach()
    reward_preferred = -0.5 * beta * (model_preferred - ref_preferred)
    reward_rejected = -0.5 * beta * (model_rejected - ref_rejected)
    inside = reward_preferred - reward_rejected
    p = torch.as_tensor(preferred_share, dtype=inside.dtype, device=inside.device)
    if share_loss == "smpo":
        loss = -F.logsigmoid(10 * (2 * p - 1) * inside).mean()
    else:
        loss = -(p * F.logsigmoid(inside) + (1 - p) * F.logsigmoid(-inside)).mean()
    inside = inside.detach()
    accuracy = (inside > 0).float().mean() + 0.5 * (inside == 0).float().mean()
    return DPOTerms(
        loss=loss, inside=inside, accuracy=accuracy,
        reward_preferred=reward_preferred.detach().mean(),
        reward_rejected=reward_rejected.detach().mean(), margin=inside.mean(),
    )


def ipo_loss(
    model_preferred: torch.Tensor,
    model_rejected: torch.Tensor,
    ref_preferred: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DPOTerms:
    """IPO on Diffusion-DPO's margin, as diffusers' research script defines it.

    With rho = (r_w - r_l) - (e_w - e_l), how much more the model lowered the winner's
    error than the loser's, relative to the reference: loss = mean((rho - 1/(2 beta))^2).
    So beta sets the margin the model is pulled to (1/(2 beta), in units of per-sample
    error) instead of scaling a logistic loss: a larger beta keeps the model closer to
    its reference. At initialisation rho = 0 and the loss is 1/(4 beta^2). The rewards,
    margin and accuracy are DPO's (`dpo_loss`), so the two read alike in the logs.
    """
    terms = dpo_loss(model_preferred, model_rejected, ref_preferred, ref_rejected, beta)
    rho = (ref_preferred.float().detach() - ref_rejected.float().detach()) - (
        model_preferred.float() - model_rejected.float())
    terms.loss = (rho - 1 / (2 * beta)).pow(2).mean()
    return terms


@dataclass
class MaPOTerms:
    """MaPO's loss and what to watch: the log-odds margin should rise above zero."""

    loss: torch.Tensor  # scalar, differentiable
    log_odds: torch.Tensor  # per pair, detached: f(e_w) - f(e_l)
    accuracy: torch.Tensor  # share of pairs with log_odds > 0 (the winner denoised better)
    ratio: torch.Tensor  # mean logsigmoid(T * log_odds): the preference term, at most 0
    margin: torch.Tensor  # mean(log_odds)


def mapo_loss(
    model_preferred: torch.Tensor,
    model_rejected: torch.Tensor,
    beta_mapo: float,
    snr: float,
    num_train_timesteps: int,
) -> MaPOTerms:
    """MaPO (Hong et al., arXiv 2406.06424), which needs no reference model.

    Each error e becomes a likelihood-like score f(e) = s e / (exp(s e) - 1) (1 at e = 0,
    falling as e grows; s the `snr` constant), and

        loss = mean(e_w) - beta_mapo * mean(logsigmoid(T * (f(e_w) - f(e_l))))

    with T the scheduler's training timesteps: the winner's plain denoising loss plus a
    margin term that pushes its score above the loser's. With no reference, its value at
    step 0 is no constant (DPO's is ln 2): it is whatever the base model's errors give.
    """
    model_preferred, model_rejected = model_preferred.float(), model_rejected.float()

    def score(error: torch.Tensor) -> torch.Tensor:
        scaled = snr * error
        small = scaled.abs() < 1e-6  # the limit at 0, where the quotient is 0/0
        return torch.where(small, torch.ones_like(scaled),
                           scaled / torch.expm1(torch.where(small, torch.ones_like(scaled),
                                                            scaled)))

    log_odds = score(model_preferred) - score(model_rejected)
    ratio = F.logsigmoid(num_train_timesteps * log_odds)
    loss = model_preferred.mean() - beta_mapo * ratio.mean()
    log_odds = log_odds.detach()
    accuracy = (log_odds > 0).float().mean() + 0.5 * (log_odds == 0).float().mean()
    return MaPOTerms(loss=loss, log_odds=log_odds, accuracy=accuracy,
                     ratio=ratio.detach().mean(), margin=log_odds.mean())


@dataclass
class KTOTerms:
    """KTO's loss and what to watch: liked images' rewards should rise above disliked."""

    loss: torch.Tensor  # scalar, differentiable
    accuracy: torch.Tensor  # share of images on their label's side of the reference point
    reward_liked: torch.Tensor  # mean beta * (r - e) over liked images (0 when none)
    reward_disliked: torch.Tensor
    margin: torch.Tensor  # reward_liked - reward_disliked
    reference_point: torch.Tensor  # Q, in reward units


def kto_loss(
    model_errors: torch.Tensor,
    ref_errors: torch.Tensor,
    liked: torch.Tensor,
    beta: float,
) -> KTOTerms:
    """Diffusion-KTO (Li et al., arXiv 2404.04465) on single images, each liked or not.

    Per image, g = r - e (how much more the model lowered its error than the reference
    did); the batch's reference point is Q = max(0, mean(g)), held fixed; with y = +1 for
    a liked image and -1 for a disliked one,

        loss = mean(1 - sigmoid(y * beta * (g - Q)))

    as Diffusion-KTO's code computes it (its default "sigmoid" utility, both weights 1,
    beta multiplying the raw error difference; its script's default beta is 1000).
    At initialisation g = 0 and the loss is 1/2.
    """
    model_errors, ref_errors = model_errors.float(), ref_errors.float().detach()
    sign = torch.where(liked.bool(), 1.0, -1.0).to(model_errors.device)
    gain = ref_errors - model_errors
    point = gain.detach().mean().clamp(min=0)
    utility = sign * beta * (gain - point)
    loss = (1 - torch.sigmoid(utility)).mean()
    utility, reward = utility.detach(), beta * gain.detach()
    is_liked = sign > 0

    def mean_of(mask: torch.Tensor) -> torch.Tensor:
        return reward[mask].mean() if mask.any() else reward.new_zeros(())

    reward_liked, reward_disliked = mean_of(is_liked), mean_of(~is_liked)
    return KTOTerms(
        loss=loss, accuracy=(utility > 0).float().mean() + 0.5 * (utility == 0).float().mean(),
        reward_liked=reward_liked, reward_disliked=reward_disliked,
        margin=reward_liked - reward_disliked, reference_point=beta * point,
    )


def winner_safe_scale(residual_preferred: torch.Tensor, residual_rejected: torch.Tensor,
                      mu: float) -> torch.Tensor:
    """Diffusion-SDPO's scale of the loser's gradient (arXiv 2511.03317), in [0, 1].

    From the output-space residuals (prediction - target, [pairs, C, H, W]) of winners
    and losers: g_w and g_l, the gradients of the winners' and the losers' mean errors,
    are proportional to them. An update along -g_w + lambda g_l keeps the winner's error
    from rising to first order, (-g_w + lambda g_l) . g_w <= -mu |g_w|^2, when
    lambda <= (1 - mu) |g_w|^2 / (g_l . g_w); where g_l . g_w <= 0 nothing needs
    holding back and lambda is 1. One scalar for the batch, no gradient of its own.
    """
    g_w = residual_preferred.detach().float().flatten()
    g_l = residual_rejected.detach().float().flatten()
    aligned = torch.dot(g_l, g_w)
    if aligned <= 0:
        return torch.ones((), device=g_w.device)
    return ((1 - mu) * torch.dot(g_w, g_w) / aligned).clamp(0.0, 1.0)


def scaled_gradient(value: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`value` unchanged, with its gradient multiplied by `scale`."""
    return value.detach() + scale * (value - value.detach())


def sft_loss(model_preferred: torch.Tensor) -> torch.Tensor:
    """The paper's SFT baseline: plain denoising loss on the preferred images only."""
    return model_preferred.float().mean()


def bradley_terry_loss(score_0: torch.Tensor, score_1: torch.Tensor,
                       label_0: torch.Tensor) -> torch.Tensor:
    """A reward model's loss per pair (PickScore's, without in-batch negatives): the
    cross-entropy of softmax(score_0, score_1) against the votes' (label_0, 1 - label_0),
    a tie being (1/2, 1/2), less the labels' own entropy, so that a pair the model gets
    exactly right costs 0 (PickScore adds log 2 to a tie's loss for that). The caller
    weighs the pairs (PickScore: by 1 / the pairs of each one's prompt)."""
    p = label_0.float()
    gap = score_0.float() - score_1.float()
    cross = -(p * F.logsigmoid(gap) + (1 - p) * F.logsigmoid(-gap))
    return cross + torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)


# --- online RL ------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, groups: torch.Tensor,
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's reward standardised within its prompt's group, (r - mean) / (std +
    eps) with the population std (flow_grpo's and DiffusionNFT's per-prompt tracker), and
    which groups carry a signal: a group whose rewards are all equal teaches nothing
    (advantage 0) and is skipped. `groups`: the group index of each sample."""
    rewards = rewards.double()
    advantages = torch.zeros_like(rewards)
    live = torch.zeros_like(rewards, dtype=torch.bool)
    for group in groups.unique():
        members = groups == group
        values = rewards[members]
        spread = values.std(unbiased=False)
        if spread > 0:
            advantages[members] = (values - values.mean()) / (spread + eps)
            live[members] = True
    return advantages.float(), live


def optimality(advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """DiffusionNFT's optimality probability r in [0, 1] from an advantage: clipped to
    [-clip, clip], then mapped linearly, so the group's mean sample is 1/2."""
    return (advantages.clamp(-clip, clip) / clip / 2 + 0.5).clamp(0, 1)


@dataclass
class NFTTerms:
    """DiffusionNFT's loss (per sample, before the caller's mean) and what to watch."""

    policy: torch.Tensor  # per sample, differentiable: the positive/negative policy term
    kl: torch.Tensor  # per sample, differentiable: mean (v - v_ref)^2
    positive: torch.Tensor  # per sample, detached: the positive policy's weighted x0 error
    negative: torch.Tensor  # per sample, detached: the negative policy's
    old_deviation: torch.Tensor  # per sample, detached: mean (v - v_old)^2


def nft_loss(velocity: torch.Tensor, old_velocity: torch.Tensor, ref_velocity: torch.Tensor,
             noisy: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor,
             r: torch.Tensor, beta: float, clip: float) -> NFTTerms:
    """DiffusionNFT (Zheng et al., arXiv 2509.16117), as its train_nft_sd3.py computes it.

    From the policy's velocity v, the old (sampling) policy's v_old and the noisy sample
    x_t = (1 - s) x0 + s eps of a clean rollout x0: an implicit positive policy
    v+ = beta v + (1 - beta) v_old and a negative one v- = (1 + beta) v_old - beta v,
    each turned into a clean estimate x0^ = x_t - s v; each error
    mean((x0^ - x0)^2) / mean|x0^ - x0| (the adaptive weight held fixed); then

        policy = clip * (r * positive + (1 - r) * negative) / beta

    so a sample with r = 1 pulls v+ to the data and one with r = 0 pushes v- to it (v
    away from it); on-policy (v = v_old) an r of 1/2 gives no gradient. `clip` is the
    advantage clip the official loss multiplies by. The KL to the reference is the
    velocities' mean squared difference; the caller weighs it (`kl_beta`)."""
    v, v_old = velocity.float(), old_velocity.float().detach()
    x0, x_t = clean.float(), noisy.float()
    s = sigma.float().view(-1, *([1] * (x0.dim() - 1)))
    dims = tuple(range(1, x0.dim()))

    def weighted_error(policy_velocity: torch.Tensor) -> torch.Tensor:
        miss = (x_t - s * policy_velocity) - x0
        scale = miss.detach().abs().mean(dim=dims).clamp(min=1e-5)
        return miss.pow(2).mean(dim=dims) / scale

    positive = weighted_error(beta * v + (1 - beta) * v_old)
    negative = weighted_error((1 + beta) * v_old - beta * v)
    r = r.float().to(v.device)
    policy = clip * (r * positive + (1 - r) * negative) / beta
    kl = (v - ref_velocity.float().detach()).pow(2).mean(dim=dims)
    return NFTTerms(policy=policy, kl=kl, positive=positive.detach(),
                    negative=negative.detach(),
                    old_deviation=(v.detach() - v_old).pow(2).mean(dim=dims))
