"""`accelerate launch -m train`: the Diffusion-DPO trainer."""
