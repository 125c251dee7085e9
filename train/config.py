"""Everything a training run is: one dataclass, filled from a preset or a file, then flags.

    accelerate launch -m train toy --max_steps 300 --learning_rate 1e-5
    accelerate launch -m train my_run.yaml

Resolution order: the dataclass defaults, then the preset (train/presets.py) or the
config file (YAML or JSON), then `--key value` flags. The resolved config is saved as
`config.yaml` in the output folder, and that file is itself a valid config. A config
made in code, `TrainConfig(...)`, is converted and checked as it is made, with the same
one-line errors as the command line.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from cli.errors import TrainError
from data.store import QUESTIONS
from models.toy import TOY_NAME
from train.presets import PRESETS

HOLDOUT_SHARE = 10  # a run holds out at most one pair in this many
OBJECTIVES = ("dpo", "ipo", "kto", "mapo", "sft")
REFERENCE_OBJECTIVES = ("dpo", "ipo", "kto")  # the others train with no reference model
PAIRED_REFERENCE_OBJECTIVES = ("dpo", "ipo")  # the DPO family, where winner_safe applies
TIMESTEP_SAMPLING = ("logit_normal", "uniform")  # flow models' noise-level densities
LOSS_WEIGHTING = ("sigma_sqrt", "cosmap")  # diffusers' SD3/FLUX scripts' schemes



def _help(text: str, default=MISSING, factory=MISSING):
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    # What to train
    model: str = _help("base model: `toy`, a local pipeline folder or a Hub id", TOY_NAME)
    objective: str = _help("`dpo` (Diffusion-DPO), `ipo` (IPO on DPO's margin), `kto` "
                           "(Diffusion-KTO: each image liked or disliked, both-bad votes "
                           "too), `mapo` (MaPO: no reference model) or `sft` (the paper's "
                           "baseline: denoising loss on the preferred images only)", "dpo")
    reference_model: str | None = _help(
        "dpo, ipo and kto with full fine-tuning: the frozen reference, when it is not `model` "
        "itself (training in rounds: `model` the last round's, this the base); the same "
        "architecture as `model` (default: `model`)", None)
    beta: float = _help("DPO beta in the official convention (inside = -0.5*beta*delta; "
                        "paper 5000); for ipo, the margin pulled to is 1/(2*beta); for "
                        "kto, the scale of the raw error gain", 5000.0)
    winner_safe: bool = _help("dpo and ipo: scale the loser's gradient so a step does not "
                              "raise the winner's error (Diffusion-SDPO)", False)
    winner_safe_mu: float = _help("winner_safe's margin mu in [0, 1]: how much a step must "
                                  "lower the winner's error (the SDPO scripts' 0.9)", 0.9)
    beta_mapo: float = _help("MaPO's weight of its margin term (MaPO's default)", 0.1)
    mapo_snr: float = _help("MaPO's constant s in its error score s*e/(exp(s*e)-1) "
                            "(MaPO's default)", 0.5)
    # Flow-matching models (sd3, flux: train/processes.py); ignored for sd and sdxl
    timestep_sampling: str = _help("sd3/flux: the density the noise level is drawn from: "
                                   "logit_normal (diffusers' SD3 and FLUX scripts) or "
                                   "uniform", "logit_normal")
    logit_mean: float = _help("sd3/flux: logit_normal's mean", 0.0)
    logit_std: float = _help("sd3/flux: logit_normal's standard deviation", 1.0)
    flow_shift: float | None = _help("sd3/flux: the noise-level shift s in s*u/(1+(s-1)*u) "
                                     "(default: the model scheduler's: SD3 3.0, FLUX 1.0)",
                                     None)
    loss_weighting: str | None = _help("sd3/flux: a per-sample weight of the velocity "
                                       "errors, sigma_sqrt or cosmap (default: none, every "
                                       "error weighs the same)", None)
    flux_guidance: float = _help("flux dev (guidance as an input): the guidance value the "
                                 "transformer is given in training (diffusers' FLUX scripts: "
                                 "3.5)", 3.5)
    max_sequence_length: int | None = _help("sd3/flux: T5 tokens per caption in the cache "
                                            "(default: the pipeline's own, SD3 256, FLUX "
                                            "512)", None)
    lora_rank: int = _help("LoRA rank; 0 trains the full UNet or transformer", 0)
    lora_alpha: float | None = _help("LoRA alpha (default: the rank, as diffusers' script)",
                                     None)
    lora_targets: list[str] = _help("UNet or transformer modules that get LoRA adapters",
                                    factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # Data
    data: list[str] = _help("pair sources: DuckDB stores (.duckdb) and Pick-a-Pic parquet "
                            "files or folders", factory=lambda: ["runs/prefs.duckdb"])
    data_ratios: list[float] | None = _help("mixing ratio per source (default: by size)", None)
    num_samples: int | None = _help("pairs in the mix (default: as many as the ratios allow "
                                    "without repeats)", None)
    split: str = _help("which split of the sources to train on", "train")
    include_ties: bool = _help("keep tied pairs (image 0 then counts as preferred)", False)
    question: str = _help("which question's votes a store gives: preference, appeal or "
                          "alignment (docs/ANNOTATE.md)", "preference")
    drop_flagged: bool = _help("leave out a store's votes by annotators that `python -m data "
                               "stats` flags", False)
    holdout_pairs: int = _help("at most this many pairs kept out of training to measure "
                               "held-out implicit accuracy: whole prompts, none of them "
                               f"trained on, about one pair in {HOLDOUT_SHARE} (none under "
                               f"{HOLDOUT_SHARE} pairs), or the data's own validation split "
                               "where it has one", 0)
    resolution: int = _help("training resolution in pixels (square)", 512)
    random_crop: bool = _help("random instead of centre crop (the same for both images)", False)
    random_flip: bool = _help("flip a pair horizontally with probability 1/2 (both images "
                              "together), drawn every step", True)
    flip_per_pair: bool = _help("with random_flip: draw each pair's flip once, from (seed, "
                                "pair index), and keep it for the whole run (the toy preset's "
                                "recipe, measured better there)", False)
    prompt_dropout: float = _help("share of captions replaced by the empty prompt, for "
                                  "classifier-free guidance", 0.1)
    cache_dir: str = _help("where cached latents and text embeddings live", "runs/cache")
    cache_workers: int = _help("processes decoding images while the cache is built", 0)
    process_group_timeout: int = _help(
        "seconds a process waits for the others in a collective (a barrier) before the run "
        "stops with one line naming the phase; long enough for an evaluation or a large "
        "model's checkpoint (the cache is built by every process, so none waits for it)",
        3600)
    # Optimisation
    batch_size: int = _help("pairs per process per forward pass", 1)
    effective_batch: int = _help("pairs per optimizer step; gradient accumulation is "
                                 "derived from it", 16)
    max_steps: int = _help("optimizer steps", 1000)
    learning_rate: float = _help("peak learning rate", 1e-5)
    lr_scheduler: str = _help("diffusers schedule name: constant_with_warmup, constant, "
                              "cosine, linear, ...", "constant_with_warmup")
    warmup_steps: int = _help("learning-rate warmup steps", 0)
    optimizer: str = _help("`adamw` or `adafactor`", "adamw")
    adam_beta1: float = _help("AdamW beta1", 0.9)
    adam_beta2: float = _help("AdamW beta2", 0.999)
    weight_decay: float = _help("weight decay", 1e-2)
    adam_epsilon: float = _help("AdamW epsilon", 1e-8)
    max_grad_norm: float = _help("gradient clipping norm", 1.0)
    ema_decay: float = _help("keep an exponential moving average of the trained weights with "
                             "this decay per step (0: off; 0.99 averages about the last 100 "
                             "steps): the average is what is evaluated, kept as best/ and "
                             "saved as final/", 0.0)
    mixed_precision: str = _help("`auto` (bf16 on GPU, fp32 on CPU), `no`, `fp16` or `bf16`",
                                 "auto")
    gradient_checkpointing: bool = _help("trade compute for memory in the UNet", False)
    seed: int = _help("seed for data order, noise, timesteps and prompt dropout", 0)
    # Output, checkpoints, logging
    output_dir: str = _help("run folder (default: runs/train/<preset or config name>)", "")
    resume: str | None = _help("`latest` or a checkpoint folder to continue from", None)
    checkpoint_every: int = _help("save a resumable checkpoint every N steps (0: never)", 500)
    checkpoints_kept: int = _help("how many checkpoints to keep (oldest removed first)", 3)
    log_every: int = _help("log scalars every N steps", 10)
    eval_every: int = _help("held-out accuracy, sample grid and sample score every N "
                            "steps (0: never)", 0)
    sample_prompts: list[str] = _help("fixed prompts of the sample grid", factory=list)
    sample_seeds: int = _help("samples per prompt (seeds sample_seed_start.."
                              "sample_seed_start+N-1)", 2)
    sample_seed_start: int = _help("first seed of the sample grid; keep it apart from the "
                                   "seeds an evaluation uses when keep_best picks by it", 0)
    sample_steps: int = _help("sampler steps for the sample grid", 20)
    sample_guidance: float = _help("guidance scale for the sample grid", 7.5)
    scorer: str | None = _help("scorer for the samples: toy_judge, pickscore, clip, "
                               "hpsv2, aesthetic or module:callable", None)
    keep_best: bool = _help("also save the model with the best sample score to best/", False)
    guard_scorers: list[str] = _help("scorers watched beside `scorer` on the same samples, to "
                                     "catch a model that games it (toy: toy_judge); logged "
                                     "as guard_<name>", factory=list)
    guard_max_drop: float | None = _help("keep_best keeps only a step whose every guard score "
                                         "is at most this far below its first one (the "
                                         "scorer's units: toy_judge 0.05 = 5 points)", None)

    def __post_init__(self) -> None:
        for key in KEYS:
            setattr(self, key, _coerce(key, getattr(self, key)))
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
        if self.objective == "kto" and self.include_ties:
            raise TrainError("include_ties does not apply to kto: a tie likes or dislikes "
                             "neither image; drop --include_ties")
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


def unknown_key(key: str, origin: str) -> TrainError:
    """The one-line error for a key no field has, naming the key it most likely meant."""
    name = key.lstrip("-").replace("-", "_")
    shown = f"--{name}" if origin == "command line" else repr(name)
    what = "flag" if origin == "command line" else "key"
    if name in DIFFUSERS_NAMES:
        meant = DIFFUSERS_NAMES[name]
        note = (" (pairs per optimizer step; the accumulation is derived from it)"
                if meant == "effective_batch" else "")
        return TrainError(f"{origin}: unknown {what} {shown}, another trainer's name for "
                          f"--{meant}: use --{meant}{note}")
    if name in KEYS:  # written with dashes
        return TrainError(f"{origin}: unknown {what} {key}: use --{name}")
    close = difflib.get_close_matches(name, KEYS, n=1, cutoff=0.6)
    hint = f"use --{close[0]}, the nearest" if close else "no key is near it"
    return TrainError(f"{origin}: unknown {what} {shown}: {hint} (python -m train --help "
                      "lists them all)")
_OBJECTIVE_KEYS = {"dpo": ("beta",), "ipo": ("beta",), "kto": ("beta",),
                   "mapo": ("beta_mapo", "mapo_snr"), "sft": ()}


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
def _base_type(annotation: str):
    """(scalar type, is_list) of a field's annotation like 'list[float] | None'."""
    hint = typing.get_type_hints(TrainConfig)[annotation]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def _parse_scalar(kind, text: str):
    if text.lower() in ("none", "null"):
        return None
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return kind(text)


def _coerce(key: str, value):
    """A value from a file or a flag, converted to the field's type, or a one-line error."""
    kind, is_list = _base_type(key)
    try:
        if value is None:
            return None
        if is_list:
            items = value if isinstance(value, list) else [value]
            return [_parse_scalar(kind, str(v)) if isinstance(v, str) else kind(v)
                    for v in items]
        if isinstance(value, str):
            return _parse_scalar(kind, value)
        return kind(value)
    except (TypeError, ValueError) as error:
        raise TrainError(f"{key}: {error}") from None


def _load_file(path: Path) -> dict:
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise TrainError(f"cannot read config {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise TrainError(f"{path} must hold a mapping of keys to values")
    return values


def _apply(config: TrainConfig, values: dict, origin: str) -> None:
    for key, value in values.items():
        key = key.replace("-", "_")
        if key.startswith("_"):  # a preset's description
            continue
        if key not in KEYS:
            raise unknown_key(key, origin)
        setattr(config, key, _coerce(key, value))


def resolve(preset_or_file: str, overrides: dict | None = None) -> TrainConfig:
    """The config named by a preset or a file, with `overrides` on top."""
    config = TrainConfig()
    path = Path(preset_or_file)
    if preset_or_file in PRESETS:
        _apply(config, PRESETS[preset_or_file], f"preset {preset_or_file}")
        name = preset_or_file
    elif path.suffix in (".yaml", ".yml", ".json") and path.exists():
        _apply(config, _load_file(path), str(path))
        name = path.stem
    else:
        raise TrainError(
            f"{preset_or_file!r} is neither a preset ({', '.join(PRESETS)}) nor a "
            ".yaml/.json config file"
        )
    _apply(config, overrides or {}, "command line")
    if not config.output_dir:
        config.output_dir = str(Path("runs/train") / name)
    config.check()
    return config


def save(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(asdict(config), sort_keys=False))


def parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {name:6} {values['_about']}" for name, values in PRESETS.items())
    parse = argparse.ArgumentParser(
        prog="accelerate launch -m train",
        description="Diffusion-DPO fine-tuning of an SD1.5, SDXL or toy model on preference "
                    "pairs.",
        epilog=f"presets:\n{presets}\n\nEvery key can also be set in a YAML/JSON config "
               "file. The resolved config is saved as OUTPUT_DIR/config.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--lr` must not quietly mean --lr_scheduler
    )
    parse.add_argument("preset", metavar="PRESET_OR_CONFIG",
                       help="a preset name or a .yaml/.json config file")
    keys = parse.add_argument_group("keys (each overrides the preset or file)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        _, is_list = _base_type(f.name)
        text = f.metadata["help"]
        if "(default:" not in text:  # a key whose help says its default in words keeps it
            text += f" (default: {getattr(defaults, f.name)!r})"
        keys.add_argument(f"--{f.name}", nargs="+" if is_list else None,
                          default=argparse.SUPPRESS, metavar=f.name.upper(), help=text)
    parse.add_argument("--dry_run", action="store_true",
                       help="resolve the config, count the pairs and print the plan "
                            "(processes, batch, accumulation), then stop: no model loads")
    return parse


def from_command_line(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """The resolved config, and whether --dry_run asked for the plan only."""
    parsed, unknown = parser().parse_known_args(argv)
    if unknown:
        flag = unknown[0].split("=")[0]
        if not flag.startswith("-"):
            raise TrainError(f"unexpected argument {flag!r}: give one PRESET_OR_CONFIG, then "
                             "--key value flags")
        raise unknown_key(flag, "command line")
    args = vars(parsed)
    dry_run = args.pop("dry_run")
    return resolve(args.pop("preset"), args), dry_run
