"""Running the networks: device and precision, one code path for one process or many (torchrun),
and checkpoints (saved atomically, loaded without ever running code from the file)."""
