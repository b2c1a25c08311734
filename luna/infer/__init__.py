"""From scans to scores and findings with trained models: `luna predict`'s and `luna detect`'s jobs."""
