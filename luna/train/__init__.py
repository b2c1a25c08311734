"""Training: augmentation, the optimiser and schedule, one-epoch loops, the run's logs (lines,
TensorBoard, summary.csv), validation scoring, and the classifier trainer that ties them together."""
