"""Scorers: how well an image matches its prompt or pleases people, as one number.

Every scorer is a callable `score(prompts, images) -> torch.Tensor` of shape (N,), one
score per (prompt, image); higher is better. Built in:

- `pickscore`: PickScore (Kirstain et al. 2023): `logit_scale.exp()` times the cosine
  of CLIP-H image and text embeddings, from the PickScore_v1 weights.
- `clip`: CLIPScore (Hessel et al. 2021): `100 * max(cosine, 0)`.
- `aesthetic`: the LAION aesthetic predictor v2, an MLP on normalised CLIP ViT-L/14
  image embeddings; its weights are a file the user gives.
- `hpsv2`: HPS v2 (Wu et al. 2023): the cosine of image and text embeddings of its
  fine-tuned CLIP-H, from weights in transformers' CLIP format.
- `toy_judge`: the toy world's judge (models/toy/judge.py), from pixels.

A user's own scorer is named `module:callable`, a function with the same signature or
a zero-argument factory returning one (see docs/SCORERS.md); a judge trained on the
store's votes (`python -m train judge`), or any CLIP checkpoint, is named by its folder;
a scorer served by `python -m models.reward_server` (in an environment of its own) by
its URL.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from cli.errors import ModelError
from models.scorer_names import SCORERS

Scorer = Callable[[Sequence[str], Sequence[Image.Image]], torch.Tensor]

PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
CLIP_MODEL = "openai/clip-vit-large-patch14"
HPSV2_MODEL = "adams-story/HPSv2-hf"  # HPS v2 converted to CLIPModel; ViT-H-14 preprocessing
SCORE_BATCH = 32  # images a scorer takes in one call, unless the command says otherwise


def load_clip(model: str, processor: str | None, device: str):
    """(processor, model in eval mode) of a CLIP checkpoint, a hub name or a folder; a
    checkpoint that does not load is one ModelError line."""
    from transformers import AutoModel, AutoProcessor

    local = Path(model).exists()
    try:
        proc = AutoProcessor.from_pretrained(processor or model, local_files_only=local)
        net = AutoModel.from_pretrained(model, local_files_only=local).eval().to(device)
    except OSError as error:
        raise ModelError(
            f"cannot load {model}: {str(error).splitlines()[0]} "
            "(offline? give a local path to the weights)"
        ) from None
    return proc, net


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipEmbedder:
    """Normalised CLIP image and text embeddings, for the CLIP-based scorers."""

    def __init__(self, model: str, processor: str | None = None, device: str = "cpu"):
        self.processor, self.model = load_clip(model, processor, device)
        self.device = device

    @torch.inference_mode()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        return torch.nn.functional.normalize(
            _features(self.model.get_image_features(**inputs)).float(), dim=-1
        )

    def cosine(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> torch.Tensor:
        """cos(image, text) per (prompt, image), each side embedded in one forward pass."""
        return (self.texts(prompts) * self.images(images)).sum(-1)

    @torch.inference_mode()
    def texts(self, prompts: Sequence[str]) -> torch.Tensor:
        inputs = self.processor(
            text=list(prompts), padding=True, truncation=True, return_tensors="pt",
            max_length=self.processor.tokenizer.model_max_length,
        ).to(self.device)
        return torch.nn.functional.normalize(
            _features(self.model.get_text_features(**inputs)).float(), dim=-1
        )


class PickScore:
    """PickScore: logit_scale.exp() * cosine(image, text); softmax over a set ranks it."""

    def __init__(self, model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR,
                 device: str = "cpu"):
        self.clip = ClipEmbedder(model, processor, device)

    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> torch.Tensor:
        scale = self.clip.model.logit_scale.detach().exp().float()
        return (scale * self.clip.cosine(prompts, images)).cpu()

    def preference(self, prompt: str, images: Sequence[Image.Image]) -> torch.Tensor:
        """Probabilities that each image is preferred, as PickScore's paper reads them."""
        return torch.softmax(self([prompt] * len(images), images), dim=0)


class ClipScore:
    """CLIPScore: 100 * max(cosine(image, text), 0)."""

    def __init__(self, model: str = CLIP_MODEL, device: str = "cpu"):
        self.clip = ClipEmbedder(model, None, device)

    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> torch.Tensor:
        return (100 * self.clip.cosine(prompts, images).clamp(min=0)).cpu()


class AestheticHead(torch.nn.Module):
    """The LAION improved-aesthetic-predictor MLP (its weights' key names)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class AestheticScore:
    """The LAION aesthetic predictor v2 (about 1-10; the prompt is not used)."""

    def __init__(self, weights: str | Path, model: str = CLIP_MODEL, device: str = "cpu"):
        weights = Path(weights)
        if not weights.exists():
            raise ModelError(
                f"aesthetic predictor weights not found at {weights}: pass the path to "
                "sac+logos+ava1-l14-linearMSE.pth (or a file with the same keys)"
            )
        self.clip = ClipEmbedder(model, None, device)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.head = AestheticHead(state["layers.0.weight"].shape[1])
        self.head.load_state_dict(state)
        self.head.eval().to(device)

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> torch.Tensor:
        return self.head(self.clip.images(images)).squeeze(-1).float().cpu()


class HpsV2:
    """HPS v2: cosine(image, text) of its CLIP-H, as the `hpsv2` package reads it (about
    0.2-0.35). Batched on the scorer's device; the package itself scores one image per
    forward pass and reloads its checkpoint on every call."""

    def __init__(self, model: str = HPSV2_MODEL, processor: str = PICKSCORE_PROCESSOR,
                 device: str = "cpu"):
        self.clip = ClipEmbedder(model, processor, device)

    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> torch.Tensor:
        return self.clip.cosine(prompts, images).cpu()


def checked_scores(scorer: Scorer, name: str, prompts: Sequence[str],
                   images: Sequence[Image.Image], batch: int = SCORE_BATCH) -> list[float]:
    """One finite score per image, `batch` images a call, or a one-line ModelError naming
    the scorer.

    Every caller of a scorer (AI feedback, `eval auto`, the trainer's samples) goes through
    this: a user's `module:callable` may return anything, and a wrong count or a NaN
    would otherwise become a silent label or a silent mean. `batch` bounds what a call
    holds on the scorer's device (`--score-batch`: lower it when a scorer runs out of GPU
    memory, raise it while the GPU is not busy).
    """
    scores = []
    for start in range(0, len(images), batch):
        scores += _checked(scorer, name, prompts[start:start + batch],
                           images[start:start + batch])
    return scores


def _checked(scorer: Scorer, name: str, prompts: Sequence[str],
             images: Sequence[Image.Image]) -> list[float]:
    try:
        raw = scorer(prompts, images)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"scorer {name} failed: {type(error).__name__}: {error}") from None
    try:
        values = torch.as_tensor(raw).detach().cpu().double().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ModelError(f"scorer {name} returned {type(raw).__name__}, not scores") from None
    if values.numel() != len(images):
        raise ModelError(
            f"scorer {name} returned {values.numel()} scores for {len(images)} images"
        )
    if not torch.isfinite(values).all():
        raise ModelError(f"scorer {name} returned a score that is not a finite number")
    return values.tolist()


def toy_judge() -> Scorer:
    from models.toy.judge import score

    return score


def _user_scorer(spec: str) -> Scorer:
    module_name, _, attr = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"cannot import scorer {spec}: {error}") from None
    if inspect.isclass(target) or (callable(target) and not _takes_two(target)):
        target = target()  # a factory: build the scorer once
    if not callable(target):
        raise ModelError(f"{spec} is not callable: give a function score(prompts, images)")
    return target


def _takes_two(function: Callable) -> bool:
    try:
        return len(inspect.signature(function).parameters) >= 2
    except (TypeError, ValueError):
        return True


JUDGE_RECORD = "judge.json"  # what a trained judge's folder says it learnt from
JUDGE_PAIRS = "trained_pairs.npy"  # data.pairs.pair_key of each pair it trained on


def trained_judge(folder: str | Path, device: str = "cpu") -> PickScore:
    """A judge's folder (`python -m train judge`): a CLIP checkpoint scored as PickScore
    is, logit_scale.exp() * cosine, since that is the score its loss trained."""
    if not (Path(folder) / "config.json").is_file():
        raise ModelError(f"{folder} is a folder but not a scorer: give a judge's folder "
                         "(python -m train judge writes one: runs/judge/final) or a CLIP "
                         "checkpoint")
    return PickScore(str(folder), str(folder), device)


def load_scorer(name: str, model: str | None = None, processor: str | None = None,
                weights: str | None = None, device: str = "cpu") -> Scorer:
    """A scorer by name (`SCORERS`), `module:callable` or a judge's folder; `model` etc.
    override a named scorer's weights; `http://HOST:PORT` is a scorer served by
    `python -m models.reward_server`."""
    if name.startswith(("http://", "https://")):
        from models.reward_server import HttpScorer

        return HttpScorer(name)
    if Path(name).is_dir():
        return trained_judge(name, device)
    if ":" in name:
        return _user_scorer(name)
    if name == "pickscore":
        return PickScore(model or PICKSCORE_MODEL, processor or PICKSCORE_PROCESSOR, device)
    if name == "clip":
        return ClipScore(model or CLIP_MODEL, device)
    if name == "aesthetic":
        if weights is None:
            raise ModelError("the aesthetic scorer needs --weights PATH to its predictor file")
        return AestheticScore(weights, model or CLIP_MODEL, device)
    if name == "hpsv2":
        return HpsV2(model or HPSV2_MODEL, processor or PICKSCORE_PROCESSOR, device)
    if name == "toy_judge":
        return toy_judge()
    raise ModelError(f"unknown scorer {name!r}: use one of {', '.join(SCORERS)}, "
                     "module:callable or a judge's folder")
