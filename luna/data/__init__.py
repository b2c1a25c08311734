"""Candidates -> samples: cropping, the crop cache, the dataset, and how training negatives are drawn."""
