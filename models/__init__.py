"""The model layer, shared by the apps: the code that loads and runs pipelines.

- `models.loading`: `load(name)` for `toy`, a local pipeline folder, a Hub id, or a LoRA
  folder on its base; SD, SDXL, SD3 or FLUX read from the model's files.
- `models.generate`: image pairs for a prompt, with each image's provenance.
- `models.meta`: a model's denoiser built on the meta device (sizes, no weights).
- `models.scorers`: PickScore, CLIP score, aesthetic, HPSv2, the toy judge, or a user's
  `module:callable`, all as `score(prompts, images) -> tensor`; `checked_scores`, the one
  check of what a scorer returned.
- `models.toy`: the toy world (shapes, judge), its training command, the bundled model
  (`TOY_NAME`, every command's default model).

Every pipeline is built here. Outside this package diffusers is touched only where it is a
library rather than a model: the UNet models' DDPM noise schedule (train/processes.py),
the trainer's learning-rate schedule (train/trainer.py), writing a trained pipeline or
LoRA weights (train/output.py), and diffusers' log level on the annotate page
(annotate/serve.py); tests/test_docs.py holds the project to that list.

This package never imports the apps (annotate, train, eval). `load` and `LoadedModel` are
imported on first use, so `models.toy` costs no torch import.
"""

import logging


class _NoTorchvisionFallbackNote(logging.Filter):
    """Drops transformers' note that its image processors fall back from torchvision to PIL.

    diffusers' pipelines import CLIP's image processor, so every load printed it; the
    project does not install torchvision and works with the PIL fallback. A filter on
    that one logger keeps every other transformers warning (TRANSFORMERS_VERBOSITY=error
    would hide them all, in every process started with this environment).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNote())

__all__ = ["LoadedModel", "load"]


def __getattr__(name: str):
    if name in __all__:
        from models import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
