"""Training: the CLAP model with hashing heads, losses, data, the loop, evaluation."""
