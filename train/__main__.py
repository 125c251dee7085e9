"""`accelerate launch -m train`: the Diffusion-DPO trainer.

Not built yet: this entry point says so and exits with status 2.
"""

import sys

if __name__ == "__main__":
    message = "accelerate launch -m train: not built yet (see the project's open issues)"
    print(message, file=sys.stderr)
    sys.exit(2)
