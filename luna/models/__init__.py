"""The networks: the candidate classifiers (rebuilt by name from a checkpoint) and test-time views."""
