"""`accelerate launch -m train`: the Diffusion-DPO trainer (not built yet)."""
