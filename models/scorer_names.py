"""The scorers' names and how a command's help lists them, apart from the scorers
themselves so that a config (and its --help) need not import torch."""

SCORERS = ("pickscore", "clip", "aesthetic", "hpsv2", "toy_judge")
SCORER_HELP = ("toy_judge, pickscore, clip, aesthetic, hpsv2, module:callable for your own "
               "score(prompts, images), a judge's folder (python -m train judge), or "
               "http://HOST:PORT, a scorer served by python -m models.reward_server")
