"""How each kind of model is noised, what it learns to predict, and how it is called.

Two forward processes, one interface (`draw`, `noisy`, `target`, `weights`), so the
objectives in train/loss.py see per-sample errors of the same form whichever it is:

- `DDPMProcess` (sd, sdxl): the paper's. An integer timestep t uniform in [0, T), x_t =
  sqrt(a_t) x0 + sqrt(1 - a_t) eps, and the target the scheduler's `prediction_type`
  names (eps, as the paper; v; or x0).
- `FlowProcess` (sd3, flux): rectified flow. A noise level sigma in [0, 1], x_t = (1 -
  sigma) x0 + sigma eps, and the target the velocity eps - x0. Sigma is drawn as
  diffusers' SD3 and FLUX training scripts draw it: u from a logit-normal density
  (`timestep_sampling`, `logit_mean`, `logit_std`) or uniform, then shifted as the
  model's scheduler shifts it, sigma = s u / (1 + (s - 1) u) (SD3: s = 3; FLUX, whose
  scheduler shifts by image size at inference, s = 1). The transformer is given
  1000 sigma (FLUX: sigma). Errors may be weighted per sample (`loss_weighting`, as
  diffusers' `compute_loss_weighting_for_sd3`); winner and loser share sigma, so a
  weight scales both errors of a pair alike.

`conditioning` and `predict` hide how each denoiser takes its inputs: a UNet
positionally, SD3's transformer by keyword with the pooled text embedding, FLUX's with
its latents packed into 2x2 patches, position ids for image and text tokens and, for
guidance-distilled models (FLUX.1 dev, FLUX.2 dev), the guidance value as an input;
FLUX.2's with 4-axis position ids over latents already patchified in the cache;
Qwen-Image's with 2x2-packed latents, a caption mask and the image's shape in tokens;
Z-Image's as lists of latents and of captions at their own lengths, in reversed time,
predicting minus the velocity.
"""

from __future__ import annotations

import math

import torch

from cli.errors import TrainError
from models.loading import FLOW_KINDS, LoadedModel
from train.cache import CachedBatch, PairCache
from train.config import TrainConfig

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def unknown_prediction(kind: str) -> TrainError:
    return TrainError(f"the model's scheduler predicts {kind!r}: the trainer trains "
                      f"{', '.join(PREDICTION_TYPES)} models only")


class DDPMProcess:
    """The UNet's discrete diffusion, with the model's own noise schedule."""

    def __init__(self, scheduler_config):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise unknown_prediction(self.prediction_type)
        self.num_train_timesteps = self.scheduler.config.num_train_timesteps

    def draw(self, pairs: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (pairs,), generator=generator)

    def noisy(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(clean, noise, t)

    def target(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(clean, noise, t)
        return clean

    def weights(self, t: torch.Tensor) -> torch.Tensor | None:
        return None


class FlowProcess:
    """Rectified flow with a velocity target; `t` here is the noise level sigma."""

    num_train_timesteps = 1000  # the transformer's timestep is 1000 sigma

    def __init__(self, shift: float, sampling: str = "logit_normal", logit_mean: float = 0.0,
                 logit_std: float = 1.0, weighting: str | None = None):
        """`sampling`: one of train.config's TIMESTEP_SAMPLING; `weighting`: one of its
        LOSS_WEIGHTING, or None (checked there)."""
        self.shift, self.sampling, self.weighting = shift, sampling, weighting
        self.logit_mean, self.logit_std = logit_mean, logit_std

    def draw(self, pairs: int, generator: torch.Generator) -> torch.Tensor:
        """Noise levels for `pairs` pairs. diffusers' SD3 and FLUX scripts draw u =
        sigmoid(m + d z) and index their descending schedule with it, so their unshifted
        level is 1 - u, distributed as sigmoid(-m + d z): drawn so here, `logit_mean` means
        what it means there (m > 0: less noise; the SD3 paper's m has the other sign)."""
        if self.sampling == "logit_normal":
            u = torch.sigmoid(-self.logit_mean
                              + self.logit_std * torch.randn(pairs, generator=generator))
        else:
            u = torch.rand(pairs, generator=generator)
        return self.shift * u / (1 + (self.shift - 1) * u)

    def noisy(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = t.to(clean.dtype).view(-1, *([1] * (clean.dim() - 1)))
        return (1 - sigma) * clean + sigma * noise

    def target(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - clean

    def weights(self, t: torch.Tensor) -> torch.Tensor | None:
        if self.weighting == "sigma_sqrt":
            return t.float().clamp(min=1e-4) ** -2.0
        if self.weighting == "cosmap":
            return 2 / (math.pi * (1 - 2 * t.float() + 2 * t.float() ** 2))
        return None


def process_for(model: LoadedModel, config: TrainConfig) -> DDPMProcess | FlowProcess:
    """The forward process `model` was trained with, as `config` sets it up."""
    if model.kind not in FLOW_KINDS:
        return DDPMProcess(model.pipeline.scheduler.config)
    scheduler = model.pipeline.scheduler.config
    shift = config.flow_shift
    if shift is None:
        shift = 1.0 if scheduler.get("use_dynamic_shifting") else scheduler.get("shift", 1.0)
    return FlowProcess(shift, config.timestep_sampling, config.logit_mean, config.logit_std,
                       config.loss_weighting)


def conditioning(kind: str, batch: CachedBatch, cache: PairCache, generator: torch.Generator,
                 dropout: float, copies: int) -> dict:
    """Text conditioning for `copies` stacked copies of the batch, a share `dropout` of
    captions replaced by the empty prompt's embeddings (for captions of varying length,
    with its length: `text_lengths` then says how many tokens of each row are its own)."""
    drop = torch.rand(len(batch.text), generator=generator) < dropout
    text, empty = batch.text, cache.empty_text.to(batch.text.device)
    if batch.text_lengths is not None:
        lengths = torch.where(drop.to(text.device), cache.empty_length, batch.text_lengths)
        text = torch.nn.functional.pad(text, (0, 0, 0, max(0, len(empty) - text.shape[1])))
        text = text[:, :int(lengths.max())].clone()
        empty = torch.nn.functional.pad(empty, (0, 0, 0, text.shape[1] - len(empty)))
    else:
        text = text.clone()
    text[drop.to(text.device)] = empty
    inputs = {"encoder_hidden_states": text.repeat(copies, 1, 1)}
    if batch.text_lengths is not None:
        inputs["text_lengths"] = lengths.repeat(copies)
    if batch.pooled is None:
        return inputs
    pooled = batch.pooled.clone()
    pooled[drop.to(pooled.device)] = cache.empty_pooled.to(pooled.device)
    if kind == "sdxl":
        inputs["added_cond_kwargs"] = {"text_embeds": pooled.repeat(copies, 1),
                                       "time_ids": batch.time_ids.repeat(copies, 1)}
    else:
        inputs["pooled_projections"] = pooled.repeat(copies, 1)
    return inputs


def predict(net: torch.nn.Module, kind: str, noisy: torch.Tensor, t: torch.Tensor,
            inputs: dict, flux_guidance: float = 3.5) -> torch.Tensor:
    """The denoiser's prediction for `noisy` latents [B, C, H, W] at `t` (DDPM: the
    timestep; flow: sigma), in the latents' layout: for the flow kinds the velocity
    noise - x0, each transformer called as its pipeline calls it."""
    if kind not in FLOW_KINDS:
        return net(noisy, t, **inputs).sample
    if kind == "sd3":
        return net(hidden_states=noisy, timestep=t * FlowProcess.num_train_timesteps,
                   **inputs).sample
    if kind == "flux2":
        return _predict_flux2(net, noisy, t, inputs, flux_guidance)
    if kind == "qwenimage":
        return _predict_qwenimage(net, noisy, t, inputs)
    if kind == "zimage":
        return _predict_zimage(net, noisy, t, inputs)
    b, c, h, w = noisy.shape
    packed = _pack(noisy)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)
    text = inputs["encoder_hidden_states"]
    out = net(hidden_states=packed, timestep=t.to(noisy.dtype),
              guidance=_guidance(net, b, flux_guidance, noisy),
              img_ids=image_ids.to(noisy.device, noisy.dtype),
              txt_ids=torch.zeros(text.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
              **inputs).sample
    return _unpack(out, c, h, w)


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C]: 2x2 patches as tokens (FLUX.1, Qwen-Image)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(tokens: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    out = tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(b, c, h, w)


def _guidance(net: torch.nn.Module, b: int, value: float, like: torch.Tensor):
    """The guidance input of guidance-distilled transformers (FLUX.1 and FLUX.2 dev)."""
    if not getattr(net, "module", net).config.guidance_embeds:
        return None
    return torch.full((b,), value, device=like.device, dtype=like.dtype)


def _predict_flux2(net, noisy, t, inputs, flux_guidance):
    """FLUX.2: latents already in 2x2 patches (the cache's), one token per position, and
    position ids (t, h, w, l) for image tokens (0, h, w, 0) and text tokens (0, 0, 0, l)."""
    b, c, h, w = noisy.shape
    text = inputs["encoder_hidden_states"]
    zero = torch.zeros(1, dtype=torch.long)
    grid = torch.cartesian_prod(zero, torch.arange(h), torch.arange(w), zero)
    words = torch.cartesian_prod(zero, zero, zero, torch.arange(text.shape[1]))
    out = net(hidden_states=noisy.reshape(b, c, h * w).permute(0, 2, 1), timestep=t.to(
              noisy.dtype), guidance=_guidance(net, b, flux_guidance, noisy),
              encoder_hidden_states=text,
              img_ids=grid.to(noisy.device, noisy.dtype).expand(b, -1, -1),
              txt_ids=words.to(noisy.device, noisy.dtype).expand(b, -1, -1)).sample
    return out[:, :h * w].permute(0, 2, 1).reshape(b, c, h, w)


def _text_mask(inputs: dict) -> torch.Tensor:
    text, lengths = inputs["encoder_hidden_states"], inputs["text_lengths"]
    return torch.arange(text.shape[1], device=text.device)[None] < lengths[:, None].to(
        text.device)


def _predict_qwenimage(net, noisy, t, inputs):
    """Qwen-Image: 2x2-packed latents, the caption's mask, the image's (frames, rows,
    columns) in tokens."""
    b, c, h, w = noisy.shape
    out = net(hidden_states=_pack(noisy), timestep=t.to(noisy.dtype),
              encoder_hidden_states=inputs["encoder_hidden_states"],
              encoder_hidden_states_mask=_text_mask(inputs).long(),
              img_shapes=[(1, h // 2, w // 2)] * b).sample
    return _unpack(out, c, h, w)


def _predict_zimage(net, noisy, t, inputs):
    """Z-Image: lists of one-frame latents [C, 1, H, W] and of captions cut to their own
    tokens; its time runs the other way (1 - sigma) and it predicts x0 - noise, so the
    output is negated into the velocity, as its pipeline and training script do."""
    text, mask = inputs["encoder_hidden_states"], _text_mask(inputs)
    captions = [row[keep] for row, keep in zip(text, mask, strict=True)]
    out = net(list(noisy.unsqueeze(2).unbind(0)), (1 - t).to(noisy.dtype), captions).sample
    return -torch.stack(out).squeeze(2)
