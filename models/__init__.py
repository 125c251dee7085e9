"""The model layer, shared by the apps: the only code that touches diffusers.

- `models.loading`: `load(name)` for `toy`, a local pipeline folder, a Hub id, or a LoRA
  folder on its base; SD or SDXL read from the model's files.
- `models.generate`: image pairs for a prompt, with each image's provenance.
- `models.scorers`: PickScore, CLIP score, aesthetic, HPSv2, the toy judge, or a user's
  `module:callable`, all as `score(prompts, images) -> tensor`.
- `models.toy`: the toy world (shapes, judge), its training command, the bundled model.

This package never imports the apps (annotate, train, eval).
"""

from models.loading import LoadedModel, load

__all__ = ["LoadedModel", "load"]
