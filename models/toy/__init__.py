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
