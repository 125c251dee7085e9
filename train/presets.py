"""Named recipes, like diffengine's `stable_diffusion_v15_dpo_pickascore`.

Each preset sets only what differs from TrainConfig's defaults. The paper's recipes
follow the official launchers (docs/TRAINING.md, "Presets and config files"): beta 5000,
lr 1e-8 scaled by the effective batch of 2048 = 2.048e-5, constant LR after warmup,
2000 steps, prompt dropout 0.2. The official runs use 16 GPUs x 1 pair x 128
accumulation; here the accumulation is derived from `effective_batch` and the number of
processes, so the same preset runs on 8 or 64 GPUs.
"""

from __future__ import annotations

from models.toy import TOY_FLOW_NAME, TOY_NAME
from models.toy.shapes import all_captions

PARTI_STYLE_PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "a bowl of soup that looks like a monster, knitted out of wool",
    "a red fox in a snowy forest at dawn, detailed oil painting",
    "a futuristic city skyline at night with flying cars",
]

# What both toy presets share: a run that finishes in minutes on a laptop CPU and keeps
# its sample grid's seeds (2,000,000-2,000,003) apart from eval auto's (0..N-1) and
# models.toy.evaluate's (1,000,000 up), so that keep_best picks on neither.
_TOY_RUN = {
    "resolution": 32, "effective_batch": 16, "batch_size": 16, "max_steps": 400,
    "warmup_steps": 0, "lr_scheduler": "constant", "optimizer": "adamw",
    "prompt_dropout": 0.1, "random_flip": True, "flip_per_pair": True,
    "mixed_precision": "no", "checkpoint_every": 200, "checkpoints_kept": 2,
    "log_every": 10, "eval_every": 100, "sample_prompts": all_captions(), "sample_seeds": 4,
    "sample_seed_start": 2_000_000, "scorer": "toy_judge", "holdout_pairs": 64,
}

# What the three 2026 transformer presets share (sources beside PRESETS' entries).
_FLOW_DPO_2026 = {
    "beta": 100.0, "timestep_sampling": "logit_normal", "effective_batch": 32,
    "batch_size": 1, "max_steps": 300, "warmup_steps": 0, "lr_scheduler": "constant",
    "optimizer": "adamw", "weight_decay": 1e-4, "max_grad_norm": 1.0, "prompt_dropout": 0.1,
    "gradient_checkpointing": True, "checkpoint_every": 100,
    "eval_every": 50, "sample_prompts": PARTI_STYLE_PROMPTS, "holdout_pairs": 500,
    "cache_workers": 8,
}

PRESETS: dict[str, dict] = {
    "sd15": {
        "_about": "the paper's SD1.5 recipe (full UNet, AdamW, batch 2048, 2000 steps)",
        "model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "resolution": 512, "beta": 5000.0, "learning_rate": 2.048e-5,
        "effective_batch": 2048, "batch_size": 8, "max_steps": 2000, "warmup_steps": 500,
        "optimizer": "adamw", "prompt_dropout": 0.2, "checkpoint_every": 500,
        "gradient_checkpointing": True, "eval_every": 100,
        "sample_prompts": PARTI_STYLE_PROMPTS, "holdout_pairs": 500, "cache_workers": 8,
    },
    "sdxl": {
        "_about": "the paper's SDXL recipe (full UNet, Adafactor, batch 2048, 2000 steps)",
        "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "resolution": 1024, "beta": 5000.0, "learning_rate": 2.048e-5,
        "effective_batch": 2048, "batch_size": 2, "max_steps": 2000, "warmup_steps": 200,
        "optimizer": "adafactor", "prompt_dropout": 0.2, "checkpoint_every": 200,
        "gradient_checkpointing": True, "eval_every": 100,
        "sample_prompts": PARTI_STYLE_PROMPTS, "holdout_pairs": 500, "cache_workers": 8,
    },
    "lora": {
        "_about": "one GPU: SD1.5 with LoRA rank 8, batch 32, 10k steps (diffusers' run)",
        "model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "resolution": 512, "beta": 5000.0, "lora_rank": 8, "learning_rate": 1e-5,
        "effective_batch": 32, "batch_size": 16, "max_steps": 10000, "warmup_steps": 0,
        "lr_scheduler": "constant", "optimizer": "adamw", "prompt_dropout": 0.1,
        "checkpoint_every": 1000, "eval_every": 500,
        "sample_prompts": PARTI_STYLE_PROMPTS, "holdout_pairs": 500, "cache_workers": 8,
    },
    "sd3": {
        "_about": "one GPU: SD3.5 Medium with LoRA rank 16 on the transformer, Flow-DPO "
                  "(velocity errors, logit-normal noise levels), batch 32, 2000 steps",
        "model": "stabilityai/stable-diffusion-3.5-medium",
        "resolution": 512, "beta": 100.0, "lora_rank": 16, "learning_rate": 1e-5,
        "effective_batch": 32, "batch_size": 4, "max_steps": 2000, "warmup_steps": 0,
        "lr_scheduler": "constant", "optimizer": "adamw", "prompt_dropout": 0.1,
        "timestep_sampling": "logit_normal", "max_sequence_length": 77,
        "gradient_checkpointing": True, "checkpoint_every": 500, "eval_every": 250,
        "sample_prompts": PARTI_STYLE_PROMPTS, "sample_steps": 40, "sample_guidance": 4.5,
        "holdout_pairs": 500, "cache_workers": 8,
    },
    "flux": {
        "_about": "one GPU: FLUX.1 dev with LoRA rank 16 on the transformer, Flow-DPO, "
                  "guidance 3.5 as an input, batch 32, 2000 steps",
        "model": "black-forest-labs/FLUX.1-dev",
        "resolution": 512, "beta": 100.0, "lora_rank": 16, "learning_rate": 1e-5,
        "effective_batch": 32, "batch_size": 2, "max_steps": 2000, "warmup_steps": 0,
        "lr_scheduler": "constant", "optimizer": "adamw", "prompt_dropout": 0.0,
        "timestep_sampling": "logit_normal", "flux_guidance": 3.5,
        "max_sequence_length": 512, "gradient_checkpointing": True,
        "checkpoint_every": 500, "eval_every": 250, "sample_prompts": PARTI_STYLE_PROMPTS,
        "sample_steps": 28, "sample_guidance": 3.5, "holdout_pairs": 500, "cache_workers": 8,
    },
    # The 2026 transformers: LoRA Flow-DPO, beta 100 (flow_grpo's and VeRL-Omni's Flow-DPO
    # on SD3.5 and Qwen-Image; per-element mean errors as here), logit-normal(0, 1) noise
    # levels on the scheduler's own table (the same sources), 32 pairs a step, constant
    # lr, weight decay 1e-4 and clipping 1.0 (every Flow-Factory, flow_grpo and VeRL-Omni
    # recipe), LoRA alpha twice the rank (Flow-Factory's default), prompt dropout 0.1 (this
    # project's `sd3` preset's; no source drops captions). Qwen-Image is the
    # one model with a published DPO recipe (VeRL-Omni's online DPO, 2026): its numbers are
    # taken whole. FLUX.2 [klein] and Z-Image have none in Flow-Factory, VeRL-Omni,
    # flow_grpo or DiffusionNFT (Flow-Factory lists both for offline DPO without a config);
    # their rank, targets, lr and resolution are Flow-Factory's LoRA GRPO/NFT recipes'.
    # Steps: VeRL-Omni's 300 for all three.
    "flux2-klein": {
        "_about": "FLUX.2 [klein] base 4B, LoRA rank 64 on both streams' attention and "
                  "MLPs and the single blocks (Flow-Factory's targets, with the single "
                  "blocks' attn.to_out named), Flow-DPO beta 100, lr 1e-4, 512 px, "
                  "32 pairs a step, 300 steps",
        "model": "black-forest-labs/FLUX.2-klein-base-4B",
        "lora_rank": 64, "lora_alpha": 128.0, "learning_rate": 1e-4,  # FF nft/lora/flux2_klein_base
        "lora_targets": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                         "add_v_proj", "to_add_out", "ff.linear_in", "ff.linear_out",
                         "ff_context.linear_in", "ff_context.linear_out", "to_qkv_mlp_proj",
                         *[f"single_transformer_blocks.{i}.attn.to_out" for i in range(24)]],
        "resolution": 512, "max_sequence_length": 512,  # FF: 384-512 px; Qwen3, 512 tokens
        "sample_steps": 28, "sample_guidance": 4.0,  # FF klein base eval: 28 steps, gs 4
        **_FLOW_DPO_2026,
    },
    "qwen-image": {
        "_about": "Qwen-Image (20B), VeRL-Omni's DPO recipe: LoRA rank 64 on both streams' "
                  "attention and MLPs, beta 100, lr 3e-4, 512 px, 256 text tokens, 32 pairs "
                  "a step, 300 steps",
        "model": "Qwen/Qwen-Image",
        "lora_rank": 64, "lora_alpha": 128.0, "learning_rate": 3e-4,
        "lora_targets": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                         "add_v_proj", "to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2",
                         "txt_mlp.net.0.proj", "txt_mlp.net.2"],
        "resolution": 512, "max_sequence_length": 256,
        "sample_steps": 50, "sample_guidance": 4.0,  # VeRL-Omni validation: 50 steps
        **_FLOW_DPO_2026,
    },
    "z-image": {
        "_about": "Z-Image (6B base), LoRA rank 64 on attention and the SwiGLU MLP "
                  "(Flow-Factory's targets), Flow-DPO beta 100, lr 3e-4, 512 px, 32 pairs "
                  "a step, 300 steps",
        "model": "Tongyi-MAI/Z-Image",
        "lora_rank": 64, "lora_alpha": 128.0, "learning_rate": 3e-4,  # FF grpo|nft/lora/z_image
        "lora_targets": ["to_q", "to_k", "to_v", "to_out.0", "feed_forward.w1",
                         "feed_forward.w2", "feed_forward.w3"],
        "resolution": 512, "max_sequence_length": 512,
        "sample_steps": 40, "sample_guidance": 4.0,  # FF z_image eval: 40 steps, gs 4
        **_FLOW_DPO_2026,
    },
    "toy": {
        "_about": "the bundled toy model on this laptop's CPU, judged by the toy judge",
        "model": TOY_NAME, "beta": 5000.0, "learning_rate": 2e-5, "ema_decay": 0.99,
        **_TOY_RUN,
    },
    "toy-flow": {
        "_about": "the bundled flow-matching toy (an SD3 pipeline) on this laptop's CPU: "
                  "full transformer, Flow-DPO, judged by the toy judge",
        "model": TOY_FLOW_NAME, "data": ["runs/toy-flow.duckdb"], "beta": 100.0,
        "learning_rate": 2e-5, "timestep_sampling": "logit_normal",
        **_TOY_RUN, "max_steps": 800,
    },
    "toy-flow-nft": {
        "_about": "the flow toy by online RL (DiffusionNFT): its own rollouts, 8 a caption, "
                  "rewarded by the toy judge, full transformer, on this laptop's CPU",
        "model": TOY_FLOW_NAME, **_TOY_RUN, "objective": "nft", "rewards": ["toy_judge"],
        "group_size": 8, "groups_per_step": 16, "rollout_steps": 10, "noise_levels": 2,
        "batch_size": 64, "learning_rate": 1e-5, "ema_decay": 0.9, "max_steps": 100,
        "eval_every": 10, "keep_best": True, "checkpoint_every": 20, "log_every": 1,
    },
}
