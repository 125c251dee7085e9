"""Generate image pairs for one prompt, recording how each image was made.

Both images of a pair come from one batched pipeline call, each with its own seed and
its own guidance scale. diffusers pipelines take one guidance scale per call; for the
UNets and SD3, whose pipelines batch the conditioned and unconditioned halves, a
per-image scale is applied by rescaling the text half of the denoiser's output inside
the call, which is exact: with call scale G and image scale g, the pipeline's
`u + G * (t' - u)` with `t' = u + (g / G) * (t - u)` is `u + g * (t - u)`.
The other transformers take one scale per call, so images with different scales take
one call each, each in its model's own convention (`guidance_options`): FLUX.1 dev and
FLUX.2 dev take guidance as an input of the transformer; FLUX.2 [klein] base and Z-Image
run classifier-free guidance against the empty prompt (`guidance_scale`; Z-Image's 0 is
none, as Z-Image-Turbo is run); Qwen-Image runs "true CFG" (`true_cfg_scale`) against
the negative prompt " " its model card uses. Guidance-distilled models that take none
(FLUX.1 schnell, FLUX.2 [klein] distilled) record guidance 0.
Pairs from two different models take one call per model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from PIL import Image

from cli.errors import ModelError
from data.store import ImageRecord
from models.loading import LoadedModel
from models.variety import PairVariety


@dataclass(frozen=True)
class GeneratedImage:
    """An image and its provenance: what the store's `images` table records."""

    image: Image.Image
    prompt: str
    model: str
    seed: int
    guidance_scale: float
    steps: int
    scheduler: str
    width: int
    height: int
    gen_ms: float
    model_round: int | None = None  # the round of `python -m rounds` that made the model

    def record(self, uid: str, jpg: bytes) -> ImageRecord:
        """The store's row of this image, as `jpg` (its JPEG bytes) under `uid`."""
        return ImageRecord(
            image_uid=uid, jpg=jpg, prompt=self.prompt, model=self.model, seed=self.seed,
            guidance_scale=self.guidance_scale, steps=self.steps, scheduler=self.scheduler,
            width=self.width, height=self.height, gen_ms=self.gen_ms,
            model_round=self.model_round,
        )


@contextmanager
def _per_image_guidance(denoiser: torch.nn.Module, ratios: torch.Tensor):
    """Scale each image's text-conditioned output toward its unconditioned one."""

    def hook(module, args, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        uncond, text = sample.chunk(2)
        r = ratios.to(sample.device, sample.dtype).view(-1, *([1] * (sample.dim() - 1)))
        guided = torch.cat([uncond, uncond + r * (text - uncond)])
        if isinstance(output, tuple):
            return (guided, *output[1:])
        output.sample = guided
        return output

    handle = denoiser.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# kinds whose pipelines batch the conditioned and unconditioned halves in one UNet or
# transformer call, so that `_per_image_guidance` can rescale each image's half
BATCHED_CFG_KINDS = ("sd", "sdxl", "sd3")


def takes_guidance(model: LoadedModel) -> bool:
    """Whether the model's images depend on a guidance scale at all."""
    if model.kind == "flux":
        return bool(model.denoiser.config.guidance_embeds)  # dev yes, schnell no
    if model.kind == "flux2":
        return not model.pipeline.config.get("is_distilled", False)  # klein distilled: no
    return True


def guidance_options(model: LoadedModel, scale: float, n: int) -> dict:
    """The pipeline call's arguments for guidance `scale` on `n` images."""
    if model.kind == "qwenimage":
        return {"true_cfg_scale": scale, "negative_prompt": [" "] * n}
    return {"guidance_scale": scale}


def generate(
    model: LoadedModel,
    prompt: str,
    seeds: Sequence[int],
    guidance_scales: Sequence[float],
    steps: int = 20,
    height: int | None = None,
    width: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[GeneratedImage]:
    """One image per seed for `prompt`, in one batched call (for transformers other than
    SD3 with differing guidance: one call per image); the same inputs, the same images.
    `height` and `width`: the pipeline's default size where None.

    `on_step(done, total)` is called after each sampler step, for progress displays.
    """
    if len(seeds) != len(guidance_scales):
        raise ModelError("give one guidance scale per seed")
    if not prompt.strip():
        raise ModelError("the prompt is empty: type what the image should show")
    n = len(seeds)
    if not takes_guidance(model):
        guidance_scales = [0.0] * n
    top = max(guidance_scales)
    varies = len(set(guidance_scales)) > 1
    if varies and model.kind not in BATCHED_CFG_KINDS:
        return [image for seed, g in zip(seeds, guidance_scales, strict=True)
                for image in generate(model, prompt, [seed], [g], steps, height, width,
                                      on_step)]
    if varies and min(guidance_scales) <= 1.0:
        raise ModelError("per-image guidance scales must all be above 1")
    pipe = model.pipeline
    step_callback = None
    if on_step is not None:

        def step_callback(pipeline, step, timestep, tensors):
            on_step(step + 1, steps)
            return tensors

    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    start = time.perf_counter()
    with model.lock, torch.inference_mode():
        guidance = (
            _per_image_guidance(model.denoiser, torch.tensor(guidance_scales) / top)
            if varies else nullcontext()
        )
        with guidance:
            images = pipe(
                prompt=[prompt] * n, num_inference_steps=steps, generator=generators,
                height=height, width=width, callback_on_step_end=step_callback,
                **guidance_options(model, top, n),
            ).images
    gen_ms = (time.perf_counter() - start) * 1000 / n
    return [
        GeneratedImage(
            image=image, prompt=prompt, model=model.name, seed=int(seed),
            guidance_scale=float(g), steps=steps, scheduler=model.scheduler_name,
            width=image.width, height=image.height, gen_ms=gen_ms, model_round=model.round,
        )
        for image, seed, g in zip(images, seeds, guidance_scales, strict=True)
    ]


def generate_pair(
    models: LoadedModel | Sequence[LoadedModel],
    prompt: str,
    variety: PairVariety | None = None,
    rng: random.Random | None = None,
    seeds: Sequence[int] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[GeneratedImage, GeneratedImage]:
    """Two images for `prompt`: one batched call, or one call per model given two.

    `on_step(done, total)` reports progress over the whole pair.
    """
    rng, variety = rng or random.Random(), variety or PairVariety()
    drawn_seeds, guidance = variety.draw(rng)
    seeds = list(seeds) if seeds is not None else drawn_seeds
    if isinstance(models, LoadedModel):
        first, second = generate(models, prompt, seeds, guidance, variety.steps, variety.size,
                                 variety.size, on_step=on_step)
        return first, second
    if len(models) != 2:
        raise ModelError("a pair comes from one model or two")
    steps = variety.steps

    def half(offset: int):
        if on_step is None:
            return None
        return lambda done, _total: on_step(offset + done, 2 * steps)

    size = variety.size
    [first] = generate(models[0], prompt, seeds[:1], guidance[:1], steps, size, size,
                       on_step=half(0))
    [second] = generate(models[1], prompt, seeds[1:], guidance[1:], steps, size, size,
                        on_step=half(steps))
    return first, second
