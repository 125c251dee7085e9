"""`python -m eval`: the blind A/B evaluation app (not built yet)."""
