"""The model layer, shared by the apps: the only code that touches diffusers.

- `models.loading`: `load(name)` for `toy`, a local pipeline folder, a Hub id, or a LoRA
  folder on its base; SD or SDXL read from the model's files.
- `models.generate`: image pairs for a prompt, with each image's provenance.
- `models.scorers`: PickScore, CLIP score, aesthetic, HPSv2, the toy judge, or a user's
  `module:callable`, all as `score(prompts, images) -> tensor`.
- `models.toy`: the toy world (shapes, judge), its training command, the bundled model.

This package never imports the apps (annotate, train, eval).
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

from models.loading import LoadedModel, load  # noqa: E402

__all__ = ["LoadedModel", "load"]
