"""How much memory a run will hold per process, estimated before any weight is loaded.

The denoiser is built from its config on the meta device (no weights, nothing
downloaded), so `--dry_run` can size a run at SDXL scale on a laptop. Weights, gradients
and optimizer state follow from the parameter counts and the run's precision. The
activations the backward pass keeps are counted too, by hooking the tensors autograd
saves during one meta forward at the run's batch, resolution and (transformers) text
length (with gradient checkpointing when the config asks for it). Under FSDP (an FSDP
launch), weights, reference, gradients and optimizer state are each process's shard,
plus two of the model's blocks gathered at a time for a forward. Not counted: the VAE
and text encoders (unloaded after the cache is built), the allocator's slack, and the
peak of recomputing one checkpointed block; docs/BENCHMARKS.md ("Real sizes") sets the
estimate beside a measured step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from models.meta import denoiser_on_meta
from train.config import REFERENCE_OBJECTIVES, TrainConfig
from train.processes import predict

GIB = 1024**3
PEAK_BF16_TFLOPS = {"A100": 312.0, "H100 SXM": 989.4}  # dense, NVIDIA's data sheets
UTILISATION = 0.4  # of that peak, a plan's assumption (the official recipe reaches 8%)


def counted_flops(function) -> int:
    """FLOPs of running `function` (multiply-adds count as two), on meta tensors too."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process; `activations` is None where it was not counted."""

    parameters: int
    trainable: int
    weights: int
    reference: int
    gradients: int
    optimizer: int
    activations: int | None
    gathered: int = 0  # sharded: the blocks' full weights gathered for a forward

    @property
    def total(self) -> int:
        return (self.weights + self.reference + self.gradients + self.optimizer
                + (self.activations or 0) + self.gathered)


def unet_inputs(unet, batch: int, resolution: int) -> dict:
    """Zero inputs of the shapes a UNet (SDXL's conditioning too) takes at `resolution`."""
    side = resolution // 8
    config = unet.config
    inputs = {
        "sample": torch.zeros(batch, config.in_channels, side, side),
        "timestep": torch.zeros(batch, dtype=torch.long),
        "encoder_hidden_states": torch.zeros(batch, 77, config.cross_attention_dim),
    }
    if config.addition_embed_type == "text_time":
        pooled = (config.projection_class_embeddings_input_dim
                  - 6 * config.addition_time_embed_dim)
        inputs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled),
                                       "time_ids": torch.zeros(batch, 6)}
    return inputs


@contextmanager
def fused_attention():
    """Count attention as the fused kernels GPUs and CPUs run (they keep q, k, v, the
    output and a log-sum-exp), not as meta's unfused fallback, which would keep every
    attention matrix: 0.5 GiB per layer per image at SD1.5's 64x64 latents."""
    functional = torch.nn.functional
    unfused = functional.scaled_dot_product_attention

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=None, **_):
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # the kernel adds masks
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype,
                                    device=query.device).masked_fill(~attn_mask, -torch.inf)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = unfused


def saved_bytes(forward) -> int:
    """Bytes autograd keeps for the backward pass of `forward()`, on meta tensors too."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if not isinstance(tensor, torch.nn.Parameter):
            saved += tensor.numel() * tensor.element_size()
        return tensor

    with (fused_attention(), masks_keep_all(),
          torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)):
        forward()
    return saved


def masks_keep_all():
    """On meta tensors, a selection by mask (`nonzero`: Z-Image picks caption tokens so)
    keeps every element, as it does for a caption that fills its length."""
    import torch.fx.experimental._config as fx_config

    return fx_config.patch(meta_nonzero_assume_all_nonzero=True)


def saved_activation_bytes(unet, batch: int, resolution: int) -> int:
    """Bytes autograd keeps for the backward pass of one UNet forward, counted on meta
    tensors."""
    with torch.device("meta"):
        inputs = unet_inputs(unet, batch, resolution)
        return saved_bytes(lambda: unet(**inputs))


def transformer_inputs(model: str, kind: str, config: TrainConfig,
                       images: int) -> tuple[torch.Tensor, dict] | None:
    """(zero latents, zero conditioning) of the shapes a flow transformer is trained on at
    the run's resolution and text length (`images` latents), from the model's VAE and text
    configs; None where those are not on this machine."""
    from train.cache import Preprocessing, _config, latent_shape, text_shape

    vae = _config(model, "vae")
    shapes = text_shape(model, kind, Preprocessing(config.resolution, False, False, 0,
                                                   config.max_sequence_length))
    if vae is None or shapes is None:
        return None
    (tokens, width), pooled = shapes
    inputs = {"encoder_hidden_states": torch.zeros(images, tokens, width),
              "text_lengths": torch.full((images,), tokens)}
    if pooled is not None:
        inputs = {"encoder_hidden_states": inputs["encoder_hidden_states"],
                  "pooled_projections": torch.zeros(images, *pooled)}
    return torch.zeros(images, *latent_shape(vae, kind, config.resolution)), inputs


def _optimizer_bytes(config: TrainConfig, trainable: list[torch.nn.Parameter]) -> int:
    """AdamW keeps two fp32 moments per weight; Adafactor (no momentum) a row and a
    column per matrix and a full second moment for vectors."""
    if config.optimizer == "adafactor":
        return sum(4 * ((p.shape[0] + p.numel() // p.shape[0]) if p.dim() >= 2 else p.numel())
                   for p in trainable)
    return 8 * sum(p.numel() for p in trainable)


def largest_block(net: torch.nn.Module) -> int:
    """Parameters of the largest block FSDP shards as one unit (the model's own
    `_no_split_modules`), or of the whole network where it names none."""
    blocks = [sum(p.numel() for p in module.parameters()) for module in net.modules()
              if type(module).__name__ in (getattr(net, "_no_split_modules", None) or ())]
    return max(blocks, default=sum(p.numel() for p in net.parameters()))


def estimate(config: TrainConfig, shards: int = 1) -> MemoryEstimate | None:
    """The estimate for one process of `config`, its weights, gradients and optimizer state
    split over `shards` processes (FSDP); None when the model is not on this machine."""
    built = denoiser_on_meta(config.model)
    if built is None:
        return None
    kind, net = built
    half = config.mixed_precision in ("auto", "fp16", "bf16")  # auto: bf16 on a GPU
    parameters = sum(p.numel() for p in net.parameters())
    if config.lora_rank:
        net.requires_grad_(False)
        with torch.device("meta"):
            net.add_adapter(config.lora_adapter())
    trainable = [p for p in net.parameters() if p.requires_grad]
    trained = sum(p.numel() for p in trainable)
    if config.lora_rank:  # the base is cast to the mixed-precision dtype; no copy
        weights, reference = parameters * (2 if half else 4) + trained * 4, 0
    else:  # fp32 policy and an fp32 frozen copy (train/trainer.py, build_networks)
        weights, reference = parameters * 4, parameters * 4
    activations = None
    if config.gradient_checkpointing:
        net.enable_gradient_checkpointing()
    net.train()
    if kind in ("sd", "sdxl"):
        fp32 = saved_activation_bytes(net, 2 * config.batch_size, config.resolution)
        activations = fp32 // 2 if half else fp32
    else:
        with torch.device("meta"):
            found = transformer_inputs(config.model, kind, config, 2 * config.batch_size)
            if found is not None:
                latents, inputs = found
                sigma = torch.full((len(latents),), 0.5)
                fp32 = saved_bytes(lambda: predict(net, kind, latents, sigma, inputs,
                                                   config.flux_guidance))
                activations = fp32 // 2 if half else fp32
    gradients, optimizer = 4 * trained, _optimizer_bytes(config, trainable)
    if config.ema_decay:  # its moving average: an fp32 copy of what is trained
        optimizer += 4 * trained
    gathered = 0
    if shards > 1:  # each process keeps its shard; a forward gathers one block, and the next
        weights, reference, gradients, optimizer = (-(-part // shards) for part in (
            weights, reference, gradients, optimizer))
        gathered = 2 * largest_block(net) * (2 if half else 4)
    return MemoryEstimate(parameters, trained, weights, reference, gradients, optimizer,
                          activations, gathered)


@dataclass(frozen=True)
class PairFlops:
    """FLOPs one pair costs a step: the policy's forward and backward on its images, the
    reference's forward (0 for the objectives without one), and what gradient
    checkpointing recomputes (a policy forward; 0 without it)."""

    policy: int
    reference: int
    recompute: int

    @property
    def total(self) -> int:
        return self.policy + self.reference + self.recompute


def pair_flops(config: TrainConfig) -> PairFlops | None:
    """One pair of `config`'s run counted on the meta device at its resolution and text
    length (LoRA: the reference is the same network with its adapters off); None when the
    model's configs are not on this machine."""
    built = denoiser_on_meta(config.model)
    if built is None:
        return None
    kind, net = built
    images = 1 if config.objective == "sft" else 2  # SFT trains on the winner alone
    if config.lora_rank:
        net.requires_grad_(False)
        with torch.device("meta"):
            net.add_adapter(config.lora_adapter())
    with torch.device("meta"):
        if kind in ("sd", "sdxl"):
            inputs = unet_inputs(net, images, config.resolution)

            def forward() -> torch.Tensor:
                return net(**inputs).sample
        else:
            found = transformer_inputs(config.model, kind, config, images)
            if found is None:
                return None
            latents, conditioning = found
            sigma = torch.full((images,), 0.5)

            def forward() -> torch.Tensor:
                return predict(net, kind, latents, sigma, conditioning, config.flux_guidance)

        def reference() -> None:
            with torch.no_grad():
                if config.lora_rank:
                    net.disable_adapters()
                forward()
                if config.lora_rank:
                    net.enable_adapters()

        with fused_attention(), masks_keep_all():
            policy = counted_flops(lambda: forward().float().pow(2).mean().backward())
            ref = counted_flops(reference)
    return PairFlops(policy, ref if config.objective in REFERENCE_OBJECTIVES else 0,
                     ref if config.gradient_checkpointing else 0)


def compute_line(config: TrainConfig) -> str:
    """What --dry_run prints about a pair's FLOPs and the rate they allow."""
    found = pair_flops(config)
    if found is None:
        return (f"compute: not counted: {config.model}'s configs are not on this machine")
    rates = ", ".join(f"{UTILISATION * peak * 1e12 / found.total:.2f} per {gpu}"
                      for gpu, peak in PEAK_BF16_TFLOPS.items())
    return (f"compute: {found.total / 1e12:.2f} TFLOP a pair (policy forward and backward "
            f"{found.policy / 1e12:.2f}, reference forward {found.reference / 1e12:.2f}, "
            f"checkpointing's recompute {found.recompute / 1e12:.2f}): pairs/s at "
            f"{UTILISATION:.0%} of bf16 peak: {rates}")


def size_text(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / 1024**2:.1f} MiB"


def estimate_lines(config: TrainConfig, shards: int = 1) -> list[str]:
    """What --dry_run prints about memory: one line per part, or why there is none."""
    found = estimate(config, shards)
    if found is None:
        return [f"memory: not estimated: {config.model}'s config is not on this machine "
                "(download the model, or give a local folder)"]
    precision = "fp32" if config.mixed_precision == "no" else (
        "bf16 on a GPU" if config.mixed_precision == "auto" else config.mixed_precision)
    activations = ("not counted (the VAE's or text encoder's config is not here)"
                   if found.activations is None
                   else f"{size_text(found.activations)} saved for backward at "
                        f"{config.batch_size} pairs of {config.resolution} px")
    return [
        f"memory: about {size_text(found.total)} per process ({precision}): "
        f"weights {size_text(found.weights)}, reference {size_text(found.reference)}, "
        f"gradients {size_text(found.gradients)}, optimizer {size_text(found.optimizer)}"
        + (" (with the moving average)" if config.ema_decay else "")
        + f", activations {activations}"
        + (f"; FSDP over {shards} processes: weights, gradients and optimizer are each "
           f"process's shard, plus {size_text(found.gathered)} of two blocks gathered"
           if shards > 1 else ""),
        f"        {found.parameters:,} denoiser parameters, {found.trainable:,} trained; "
        "VAE and text encoders not counted (unloaded after caching)",
    ]
