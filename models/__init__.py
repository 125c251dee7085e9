"""The model layer, shared by the apps: the code that loads and runs pipelines.

- `models.loading`: `load(name)` for `toy`, a local pipeline folder, a Hub id, or a LoRA
  folder on its base; SD or SDXL read from the model's files.
- `models.generate`: image pairs for a prompt, with each image's provenance.
- `models.scorers`: PickScore, CLIP score, aesthetic, HPSv2, the toy judge, or a user's
  `module:callable`, all as `score(prompts, images) -> tensor`; `checked_scores`, the one
  check of what a scorer returned.
- `models.toy`: the toy world (shapes, judge), its training command, the bundled model
  (`TOY_NAME`, every command's default model).

Every pipeline is built here. Outside this package diffusers is touched only where it is a
library rather than a model: the trainer's noise scheduler and learning-rate schedule
(train/trainer.py), writing a trained pipeline or LoRA weights (train/output.py), and
diffusers' log level on the annotate page (annotate/serve.py); tests/test_benchmarks.py
holds the project to that list.

This package never imports the apps (annotate, train, eval). `load` and `LoadedModel` are
imported on first use, so `models.errors` or `models.toy` cost no torch import.
"""

__all__ = ["LoadedModel", "load"]


def __getattr__(name: str):
    if name in __all__:
        from models import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
