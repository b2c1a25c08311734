"""What a person reads: figures (PNG), the evaluation's files (metrics.json and its plots) and the
one-page HTML report of a training run."""
