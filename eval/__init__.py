"""`python -m eval`: the blind A/B page (app.py, blind.py, votes.py), `eval report` of its
votes, and `eval auto`, the automatic judge (auto.py); images.py, stats.py and report.py
serve both."""
