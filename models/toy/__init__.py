"""The toy world: shapes and captions, the judge, the bundled model and its training command.

`TOY_NAME` is the name every command takes for the bundled model (the pipeline under
models/toy/pipeline); it is each command's default model.
"""

TOY_NAME = "toy"
