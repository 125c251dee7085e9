"""`accelerate launch -m train`: the Diffusion-DPO trainer, not built yet; this entry point says so and exits."""

import sys

if __name__ == "__main__":
    print("accelerate launch -m train: not built yet (see the project's open issues)", file=sys.stderr)
    sys.exit(2)
