"""What the two pages, `annotate` and `eval`, share, kept beside them: the apps never import
each other, and none of it is data (pages/shared.py)."""
