"""From scans to scores with a trained model: candidate scoring and ``luna predict``'s job."""
