"""Everything a training run is: one dataclass, filled from a preset or a file, then flags.

    accelerate launch -m train toy --max_steps 300 --learning_rate 1e-5
    accelerate launch -m train my_run.yaml

Resolution order: the dataclass defaults, then the preset (train/presets.py) or the
config file (YAML or JSON), then `--key value` flags. The resolved config is saved as
`config.yaml` in the output folder, and that file is itself a valid config. The flags
and files are read by cli/parser.py, as every command's are. A config made in code,
`TrainConfig(...)`, is checked as it is made, with the same one-line errors.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from cli.errors import TrainError, UsageError
from cli.parser import CommandParser, item_type, read_config_file, setting
from data.pairs import PAIR_VOTES
from data.store import QUESTIONS
from models.scorer_names import SCORER_HELP
from models.toy import TOY_NAME
from train.presets import PRESETS

HOLDOUT_SHARE = 10  # a run holds out at most one pair in this many
OBJECTIVES = ("dpo", "ipo", "kto", "mapo", "sft", "nft")
ONLINE_OBJECTIVES = ("nft",)  # sample, score, update (train/online.py); the others read pairs
REFERENCE_OBJECTIVES = ("dpo", "ipo", "kto", "nft")  # the others train with no reference
PAIRED_REFERENCE_OBJECTIVES = ("dpo", "ipo")  # the DPO family, where winner_safe applies
SHARE_LOSSES = ("conservative", "smpo")  # how dpo learns a pair's share (train/loss.py)
TIMESTEP_SAMPLING = ("logit_normal", "uniform")  # flow models' noise-level densities
LOSS_WEIGHTING = ("sigma_sqrt", "cosmap")  # diffusers' SD3/FLUX scripts' schemes



@dataclass(frozen=True)
class TrainConfig:
    # What to train
    model: str = setting("base model: `toy`, a local pipeline folder or a Hub id", TOY_NAME)
    objective: str = setting("`dpo` (Diffusion-DPO), `ipo` (IPO on DPO's margin), `kto` "
                             "(Diffusion-KTO: each image liked or disliked, both-bad votes "
                             "too), `mapo` (MaPO: no reference model), `sft` (the paper's "
                             "baseline: denoising loss on the preferred images only) or "
                             "`nft` (DiffusionNFT, online RL for flow models: samples of its "
                             "own, scored by `rewards`; docs/TRAINING.md)", "dpo")
    reference_model: str | None = setting(
        "dpo, ipo and kto with full fine-tuning: the frozen reference, when it is not `model` "
        "itself (training in rounds: `model` the last round's, this the base); the same "
        "architecture as `model` (default: `model`)", None)
    beta: float = setting("DPO beta in the official convention (inside = -0.5*beta*delta; "
                          "paper 5000); for ipo, the margin pulled to is 1/(2*beta); for "
                          "kto, the scale of the raw error gain", 5000.0)
    winner_safe: bool = setting("dpo and ipo: scale the loser's gradient so a step does not "
                                "raise the winner's error (Diffusion-SDPO)", False)
    winner_safe_mu: float = setting("winner_safe's margin mu in [0, 1]: how much a step must "
                                    "lower the winner's error (the SDPO scripts' 0.9)", 0.9)
    label_smoothing: float = setting("dpo: the chance eps that a vote is wrong; the loss "
                                     "becomes -(1-eps) log sigmoid(x) - eps log sigmoid(-x) "
                                     "(conservative DPO)", 0.0)
    share_loss: str = setting(
        "dpo: how a pair's share p (pair_votes share, label_smoothing) enters the loss: "
        "`conservative`, -(p log sigmoid(x) + (1-p) log sigmoid(-x)) (cDPO), or `smpo`, "
        "-log sigmoid(10 (2p - 1) x): the logit scaled per pair, a coin flip ignored (SmPO's "
        "code)", "conservative", choices=list(SHARE_LOSSES))
    beta_mapo: float = setting("MaPO's weight of its margin term (MaPO's default)", 0.1)
    mapo_snr: float = setting("MaPO's constant s in its error score s*e/(exp(s*e)-1) "
                              "(MaPO's default)", 0.5)
    # Flow-matching models (sd3, flux: train/processes.py); ignored for sd and sdxl
    timestep_sampling: str = setting("sd3/flux: the density the noise level is drawn from: "
                                     "logit_normal (diffusers' SD3 and FLUX scripts) or "
                                     "uniform", "logit_normal")
    logit_mean: float = setting("sd3/flux: logit_normal's mean", 0.0)
    logit_std: float = setting("sd3/flux: logit_normal's standard deviation", 1.0)
    flow_shift: float | None = setting("sd3/flux: the noise-level shift s in s*u/(1+(s-1)*u) "
                                       "(default: the model scheduler's: SD3 3.0, FLUX 1.0)",
                                       None)
    loss_weighting: str | None = setting("sd3/flux: a per-sample weight of the velocity "
                                         "errors, sigma_sqrt or cosmap (default: none, every "
                                         "error weighs the same)", None)
    flux_guidance: float = setting("flux dev (guidance as an input): the guidance value the "
                                   "transformer is given in training (diffusers' FLUX scripts: "
                                   "3.5)", 3.5)
    max_sequence_length: int | None = setting("sd3/flux: T5 tokens per caption in the cache "
                                              "(default: the pipeline's own, SD3 256, FLUX "
                                              "512)", None)
    lora_rank: int = setting("LoRA rank; 0 trains the full UNet or transformer", 0)
    lora_alpha: float | None = setting("LoRA alpha (default: the rank, as diffusers' script)",
                                       None)
    lora_targets: list[str] = setting("UNet or transformer modules that get LoRA adapters",
                                      factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # Data
    data: list[str] = setting("pair sources: DuckDB stores (.duckdb), Pick-a-Pic parquet, "
                              "JSONL manifests and HPDv3 .json files, or folders of them",
                              factory=lambda: ["runs/prefs.duckdb"])
    data_ratios: list[float] | None = setting("mixing ratio per source (default: by size)", None)
    num_samples: int | None = setting("pairs in the mix (default: as many as the ratios allow "
                                      "without repeats)", None)
    split: str = setting("which split of the sources to train on", "train")
    include_ties: bool = setting("keep tied pairs (dpo: each image preferred with "
                                 "probability one half, in the conservative loss; the "
                                 "others: image 0 counts as preferred)", False)
    pair_votes: str | None = setting(
        "a store's votes on the same two images (a crowd's overlap): `each` vote a pair of "
        "its own; one pair, the side most voted for preferred (`majority`; an even split is "
        "a tie); or one pair whose preferred image is better with the share of the votes "
        "that preferred it (`share`, dpo's soft labels, in the loss `share_loss` names) (default: "
        "majority; kto: each, as it reads every vote's liked and disliked image)", None,
        choices=list(PAIR_VOTES))
    question: str = setting("which question's votes a store gives: preference, appeal or "
                            "alignment (docs/ANNOTATE.md)", "preference")
    drop_flagged: bool = setting("leave out a store's votes by annotators that `python -m data "
                                 "stats` flags", False)
    holdout_pairs: int = setting("at most this many pairs kept out of training to measure "
                                 "held-out implicit accuracy: whole prompts, none of them "
                                 f"trained on, about one pair in {HOLDOUT_SHARE} (none under "
                                 f"{HOLDOUT_SHARE} pairs), or the data's own validation split "
                                 "where it has one", 0)
    resolution: int = setting("training resolution in pixels (square)", 512)
    random_crop: bool = setting("random instead of centre crop (the same for both images)", False)
    random_flip: bool = setting("flip a pair horizontally with probability 1/2 (both images "
                                "together), drawn every step", True)
    flip_per_pair: bool = setting("with random_flip: draw each pair's flip once, from (seed, "
                                  "pair index), and keep it for the whole run (the toy preset's "
                                  "recipe, measured better there)", False)
    prompt_dropout: float = setting("share of captions replaced by the empty prompt, for "
                                    "classifier-free guidance", 0.1)
    cache_dir: str = setting("where cached latents and text embeddings live", "runs/cache")
    cache_workers: int = setting("processes decoding images while the cache is built", 0)
    process_group_timeout: int = setting(
        "seconds a process waits for the others in a collective (a barrier) before the run "
        "stops with one line naming the phase; long enough for an evaluation or a large "
        "model's checkpoint (the cache is built by every process, so none waits for it)",
        3600)
    # Optimisation
    batch_size: int = setting("pairs per process per forward pass", 1)
    effective_batch: int = setting("pairs per optimizer step; gradient accumulation is "
                                   "derived from it", 16)
    max_steps: int = setting("optimizer steps", 1000)
    learning_rate: float = setting("peak learning rate", 1e-5)
    lr_scheduler: str = setting("diffusers schedule name: constant_with_warmup, constant, "
                                "cosine, linear, ...", "constant_with_warmup")
    warmup_steps: int = setting("learning-rate warmup steps", 0)
    optimizer: str = setting("`adamw` or `adafactor`", "adamw")
    adam_beta1: float = setting("AdamW beta1", 0.9)
    adam_beta2: float = setting("AdamW beta2", 0.999)
    weight_decay: float = setting("weight decay", 1e-2)
    adam_epsilon: float = setting("AdamW epsilon", 1e-8)
    max_grad_norm: float = setting("gradient clipping norm", 1.0)
    ema_decay: float = setting("keep an exponential moving average of the trained weights with "
                               "this decay per step (0: off), reached once diffusers' ramp "
                               "k/(9+k) passes it (0.99 at step 891: before, about the last "
                               "tenth of the steps): the average is what is evaluated, kept "
                               "as best/ and saved as final/", 0.0)
    mixed_precision: str = setting("`auto` (bf16 on GPU, fp32 on CPU), `no`, `fp16` or `bf16`",
                                   "auto")
    gradient_checkpointing: bool = setting("trade compute for memory in the UNet", False)
    seed: int = setting("seed for data order, noise, timesteps and prompt dropout", 0)
    # Output, checkpoints, logging
    output_dir: str = setting("run folder (default: runs/train/<preset or config name>)", "")
    resume: str | None = setting("`latest` or a checkpoint folder to continue from", None)
    checkpoint_every: int = setting("save a resumable checkpoint every N steps (0: never)", 500)
    checkpoints_kept: int = setting("how many checkpoints to keep (oldest removed first)", 3)
    log_every: int = setting("log scalars every N steps", 10)
    eval_every: int = setting("held-out accuracy, sample grid and sample score every N "
                              "steps (0: never)", 0)
    sample_prompts: list[str] = setting("fixed prompts of the sample grid", factory=list)
    sample_seeds: int = setting("samples per prompt (seeds sample_seed_start.."
                                "sample_seed_start+N-1)", 2)
    sample_seed_start: int = setting("first seed of the sample grid; keep it apart from the "
                                     "seeds an evaluation uses when keep_best picks by it", 0)
    sample_steps: int = setting("sampler steps for the sample grid", 20)
    sample_guidance: float = setting("guidance scale for the sample grid", 7.5)
    scorer: str | None = setting("scorer for the samples: " + SCORER_HELP, None)
    keep_best: bool = setting("also save the model with the best sample score to best/", False)
    guard_scorers: list[str] = setting("scorers watched beside `scorer` on the same samples, to "
                                       "catch a model that games it (toy: toy_judge); logged "
                                       "as guard_<name>", factory=list)
    guard_max_drop: float | None = setting("keep_best keeps only a step whose every guard score "
                                           "is at most this far below its first one (the "
                                           "scorer's units: toy_judge 0.05 = 5 points)", None)

    # Online RL (objective nft): rollouts from the model itself, scored, then trained on
    prompts: str | None = setting("nft: the prompt set rollouts draw from, one prompt a line "
                                  "or a CSV (default: the toy models' 18 captions)", None)
    rewards: list[str] = setting("nft: the scorers whose weighted sum is the reward: "
                                 + SCORER_HELP, factory=list)
    reward_weights: list[float] | None = setting("nft: one weight per reward (default: 1 each)",
                                                 None)
    group_size: int = setting("nft: rollouts per prompt, the group its advantages are "
                              "normalised in (DiffusionNFT: 24)", 8)
    groups_per_step: int = setting("nft: prompts per optimizer step over all processes, "
                                   "each process a whole share of them", 16)
    rollout_steps: int = setting("nft: sampler steps of a rollout (DiffusionNFT: 10)", 10)
    rollout_guidance: float | None = setting("nft: guidance of a rollout (default: "
                                             "sample_guidance; 1 samples without CFG, as "
                                             "DiffusionNFT does)", None)
    noise_levels: int = setting("nft: noise levels each rollout is trained at per step, "
                                "drawn as timestep_sampling says", 2)
    updates_per_step: int = setting("nft: optimizer steps on a step's rollouts, each on an "
                                    "equal share of its groups (DiffusionNFT: 2); the old "
                                    "policy stays the sampling one meanwhile", 1)
    shared_noise: bool = setting("nft: the rollouts of a group are trained at the same noise "
                                 "and noise levels, so they differ in their sample alone "
                                 "(common random numbers; DiffusionNFT draws each its own)",
                                 True)
    nft_beta: float = setting("nft: how far the implicit positive and negative policies "
                              "step from the old one (DiffusionNFT: 1, 0.1 for OCR)", 1.0)
    kl_beta: float = setting("nft: weight of the KL to the reference, the mean squared "
                             "velocity difference (LoRA: the adapters off); the guard that "
                             "acts in every step", 1e-4)
    old_decay: float = setting("nft: the old (sampling) policy follows the trained one as "
                               "old = d old + (1 - d) new after each step, d rising 0.001 a "
                               "step up to this (DiffusionNFT's decay_type 1: 0.5)", 0.5)
    advantage_clip: float = setting("nft: advantages are clipped to +-this before they "
                                    "become optimality probabilities", 5.0)
    rollout_db: str | None = setting("nft: the store every rollout goes to, as pairs "
                                     "labelled by the reward (source ai:REWARD) (default: "
                                     "OUTPUT_DIR/rollouts.duckdb; `none`: kept nowhere)", None)

    dry_run: bool = setting("resolve the config, count the pairs and print the plan "
                              "(processes, batch, accumulation, memory), then stop: no model "
                              "loads", False)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # TrainConfig(data="prefs.duckdb")
            object.__setattr__(self, "data", [self.data])
        if self.pair_votes is None:  # the majority trained best on a crowd (docs/RESULTS.md)
            object.__setattr__(self, "pair_votes", "each" if self.objective == "kto" else
                               "majority")
        for name, annotation in _annotations().items():
            kind, many = item_type(annotation)
            value = getattr(self, name)
            if any(not isinstance(item, kind) and item is not None
                   and not (kind is float and isinstance(item, int))
                   for item in (value if many and isinstance(value, list) else [value])):
                raise TrainError(f"{name}: expected {'a list of ' * many}{kind.__name__}, "
                                 f"got {value!r}")
        self.check()

    def accumulation(self, processes: int) -> int:
        """Micro-steps per optimizer step for `processes` processes."""
        per_pass = self.batch_size * processes
        if self.effective_batch % per_pass:
            raise TrainError(
                f"effective_batch {self.effective_batch} is not a multiple of batch_size "
                f"{self.batch_size} x {processes} processes: change either"
            )
        return self.effective_batch // per_pass

    def check(self) -> None:
        """One-line errors for settings that cannot work."""
        if self.objective not in OBJECTIVES:
            raise TrainError(f"objective must be one of {', '.join(OBJECTIVES)}, "
                             f"not {self.objective!r}")
        if self.optimizer not in ("adamw", "adafactor"):
            raise TrainError(f"optimizer must be adamw or adafactor, not {self.optimizer!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise TrainError("mixed_precision must be auto, no, fp16 or bf16")
        if self.keep_best and not (self.scorer and self.eval_every and self.sample_prompts):
            raise TrainError("keep_best needs a scorer, eval_every and sample_prompts")
        if self.reference_model and self.objective not in REFERENCE_OBJECTIVES:
            raise TrainError(f"reference_model: {self.objective} trains without a reference "
                             "model; leave it out")
        if self.reference_model and self.lora_rank:
            raise TrainError("reference_model needs full fine-tuning (lora_rank 0): LoRA's "
                             "reference is its own base with the adapters off")
        if self.guard_scorers and not (self.eval_every and self.sample_prompts):
            raise TrainError("guard_scorers need eval_every and sample_prompts")
        if self.guard_max_drop is not None and not (self.keep_best and self.guard_scorers):
            raise TrainError("guard_max_drop needs keep_best and guard_scorers")
        if not self.data:
            raise TrainError("no data: give --data with a .duckdb store or parquet shards")
        for name in ("batch_size", "effective_batch", "max_steps", "resolution",
                     "process_group_timeout"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be at least 1")
        for name in ("lora_rank", "holdout_pairs", "checkpoint_every", "eval_every",
                     "cache_workers"):
            if getattr(self, name) < 0:
                raise TrainError(f"{name} must be 0 or more")
        if self.log_every < 1:
            raise TrainError("log_every must be at least 1")
        if not 0 <= self.winner_safe_mu <= 1:
            raise TrainError("winner_safe_mu must be between 0 and 1")
        if self.winner_safe and self.objective not in PAIRED_REFERENCE_OBJECTIVES:
            raise TrainError(f"winner_safe applies to "
                             f"{' and '.join(PAIRED_REFERENCE_OBJECTIVES)}, not "
                             f"{self.objective}: drop --winner_safe or change --objective")
        if self.question not in QUESTIONS:
            raise TrainError(f"unknown question {self.question!r}: use one of "
                             f"{', '.join(QUESTIONS)}")
        if not 0 <= self.label_smoothing < 0.5:
            raise TrainError("label_smoothing must be at least 0 and below 0.5 (a vote "
                             "right more often than not)")
        if self.label_smoothing and self.objective != "dpo":
            raise TrainError(f"label_smoothing applies to dpo, not {self.objective}: drop "
                             "--label_smoothing or use --objective dpo")
        if self.share_loss not in SHARE_LOSSES:
            raise TrainError(f"share_loss must be one of {', '.join(SHARE_LOSSES)}")
        if self.share_loss == "smpo" and not (self.objective == "dpo" and (
                self.pair_votes == "share" or self.label_smoothing)):
            raise TrainError("share_loss smpo scales dpo's logit by each pair's share: add "
                             "--pair_votes share (a relabelled manifest: docs/AI_FEEDBACK.md)")
        if self.pair_votes == "share" and self.objective != "dpo":
            raise TrainError(f"pair_votes share is a soft label of dpo, not {self.objective}: "
                             "use --pair_votes majority or --objective dpo")
        if self.pair_votes != "each" and self.objective == "kto":
            raise TrainError("kto reads each vote's liked and disliked images: use "
                             f"--pair_votes each (not {self.pair_votes}) or leave it out")
        if self.objective == "kto" and self.include_ties:
            raise TrainError("include_ties does not apply to kto: a tie likes or dislikes "
                             "neither image; drop --include_ties")
        if self.objective in ONLINE_OBJECTIVES:
            self.check_online()
        for name in ("beta", "beta_mapo", "mapo_snr"):
            if not getattr(self, name) > 0:
                raise TrainError(f"{name} must be above 0")
        if not 0 <= self.ema_decay < 1:
            raise TrainError("ema_decay must be at least 0 (off) and below 1")
        if not 0 <= self.prompt_dropout <= 1:
            raise TrainError("prompt_dropout must be between 0 and 1")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise TrainError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}"
                             f", not {self.timestep_sampling!r}")
        if self.loss_weighting is not None and self.loss_weighting not in LOSS_WEIGHTING:
            raise TrainError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTING)}, "
                             f"not {self.loss_weighting!r}")
        if self.logit_std <= 0 or (self.flow_shift is not None and self.flow_shift <= 0):
            raise TrainError("logit_std and flow_shift must be above 0")
        if self.max_sequence_length is not None and self.max_sequence_length < 1:
            raise TrainError("max_sequence_length must be at least 1")

    def check_online(self) -> None:
        if not self.rewards:
            raise TrainError(f"{self.objective} needs a reward: give --rewards SCORER "
                             "(toy: toy_judge)")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise TrainError(f"reward_weights: {len(self.reward_weights)} weights for "
                             f"{len(self.rewards)} rewards: give one each")
        for name in ("group_size", "groups_per_step", "rollout_steps", "noise_levels",
                     "updates_per_step"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be at least 1")
        if self.group_size < 2:
            raise TrainError("group_size must be at least 2: a sample's advantage is "
                             "measured against the others of its prompt")
        if not self.nft_beta > 0 or self.kl_beta < 0 or not self.advantage_clip > 0:
            raise TrainError("nft_beta and advantage_clip must be above 0, kl_beta 0 or more")
        if not 0 <= self.old_decay < 1:
            raise TrainError("old_decay must be at least 0 and below 1")

    def lora_adapter(self):
        """The PEFT config of this run's LoRA adapters (gaussian init, as diffusers' script)."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha or self.lora_rank,
                          init_lora_weights="gaussian", target_modules=self.lora_targets)

    def heldout(self, pairs: int) -> int:
        """How many of `pairs` the run holds out: one in HOLDOUT_SHARE, at most
        `holdout_pairs`, so a small first collection still trains."""
        return min(self.holdout_pairs, pairs // HOLDOUT_SHARE)


KEYS = {f.name: f for f in fields(TrainConfig)}
# diffusers' DPO/LoRA scripts' flags that are named otherwise here (and an argparse habit)
DIFFUSERS_NAMES = {
    "pretrained_model_name_or_path": "model", "dataset_name": "data",
    "train_batch_size": "batch_size", "max_train_steps": "max_steps",
    "gradient_accumulation_steps": "effective_batch", "lr_warmup_steps": "warmup_steps",
    "checkpointing_steps": "checkpoint_every", "checkpoints_total_limit": "checkpoints_kept",
    "resume_from_checkpoint": "resume", "validation_steps": "eval_every", "rank": "lora_rank",
    "beta_dpo": "beta", "adam_weight_decay": "weight_decay", "lr": "learning_rate",
}


_OBJECTIVE_KEYS = {"dpo": ("beta",), "ipo": ("beta",), "kto": ("beta",),
                   "mapo": ("beta_mapo", "mapo_snr"), "sft": (),
                   "nft": ("nft_beta", "kl_beta", "group_size")}


def objective_text(values: dict) -> str:
    """An objective with the settings it uses, as a run's config (or its YAML) has them:
    "dpo (beta 5000)", "mapo (beta_mapo 0.1, mapo_snr 0.5)", "sft"."""
    objective = values.get("objective", "dpo")
    settings = ", ".join(f"{key} {values.get(key, KEYS[key].default):g}"
                         for key in _OBJECTIVE_KEYS.get(objective, ()))
    if values.get("winner_safe"):
        settings += f", winner_safe mu {values.get('winner_safe_mu', 0.9):g}"
    return f"{objective} ({settings})" if settings else objective


@functools.cache
def _annotations() -> dict:
    return typing.get_type_hints(TrainConfig)


PROG = "accelerate launch -m train"
USAGE = f"{PROG} PRESET_OR_CONFIG [--key value ...]"


class TrainParser(CommandParser):
    """TrainConfig's flags after a preset or a config file; another trainer's name for a
    setting is pointed to ours."""

    def __init__(self):
        presets = "; ".join(f"{name}: {values['_about']}" for name, values in PRESETS.items())
        super().__init__(
            TrainConfig, PROG, usage=USAGE,
            description="Diffusion-DPO and its family (ipo, kto, mapo, sft) on preference "
                        "pairs. PRESET_OR_CONFIG is a preset or a .yaml/.json file of these "
                        "settings; each flag overrides it. The resolved config is saved as "
                        "OUTPUT_DIR/config.yaml, itself a valid PRESET_OR_CONFIG.",
            epilog=f"presets: {presets}.")

    def hint(self, name: str, choices, prefix: str = "--") -> str:
        meant = DIFFUSERS_NAMES.get(name.lstrip("-").replace("-", "_"))
        if meant is None:
            return super().hint(name, choices, prefix)
        note = (" (pairs per optimizer step; the accumulation is derived from it)"
                if meant == "effective_batch" else "")
        return f"another trainer's name for --{meant}: use --{meant}{note}"


def named(preset_or_file: str) -> dict:
    """The settings a preset or a config file holds, over the output folder its name gives."""
    path = Path(preset_or_file)
    if preset_or_file in PRESETS:
        values = {key: value for key, value in PRESETS[preset_or_file].items()
                  if not key.startswith("_")}  # `_about`: the preset's description
    elif path.suffix in (".yaml", ".yml", ".json") and path.exists():
        values = read_config_file(path)
    else:
        raise UsageError(f"{PROG}: {preset_or_file!r} is neither a preset "
                         f"({', '.join(PRESETS)}) nor a .yaml/.json config file")
    return {"output_dir": str(Path("runs/train") / path.stem), **values}


def resolve(preset_or_file: str, overrides: dict | None = None) -> TrainConfig:
    """The config a preset or a file names, with `overrides` (setting: value) on top."""
    return TrainParser().parse([], {**named(preset_or_file), **(overrides or {})})


def from_command_line(argv: list[str]) -> TrainConfig:
    """The config `PRESET_OR_CONFIG --key value ...` gives."""
    if not argv or argv[0].startswith("-"):
        if {"-h", "--help"} & set(argv):
            TrainParser().parse(["--help"])
        raise UsageError(f"give a preset ({', '.join(PRESETS)}) or a config file first: "
                         f"{USAGE}")
    return TrainParser().parse(argv[1:], named(argv[0]))
