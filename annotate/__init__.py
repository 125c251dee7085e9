"""`python -m annotate`: the preference-collection app (not built yet)."""
