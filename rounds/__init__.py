"""Training in rounds: sample pairs from the newest model, label them, train, evaluate, repeat."""
