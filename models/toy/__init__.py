"""The toy world: shapes and captions, the judge, the bundled model and its training command.

`TOY_NAME` is the name every command takes for the bundled model (the pipeline under
models/toy/pipeline); it is each command's default model. `TOY_FLOW_NAME` is the
flow-matching toy (an SD3-style pipeline under models/toy/flow_pipeline, made by
`python -m models.toy.train_flow`). Both draw the toy world, so both have its captions
as their built-in prompts (`TOY_NAMES`).
"""

TOY_NAME = "toy"
TOY_FLOW_NAME = "toy-flow"
TOY_NAMES = (TOY_NAME, TOY_FLOW_NAME)


def built_in_prompts(model: str) -> list | None:
    """A model's built-in prompt set: for the toy models, their 18 captions, each with its
    shape as the category (what every command uses when given no prompt file); None for
    any other model."""
    if model not in TOY_NAMES:
        return None
    from data.prompts import Prompt
    from models.toy.shapes import all_captions, parse_caption

    return [Prompt(caption, parse_caption(caption)[1]) for caption in all_captions()]
