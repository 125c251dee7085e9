"""`python -m annotate`: the preference-collection page and headless AI feedback."""
