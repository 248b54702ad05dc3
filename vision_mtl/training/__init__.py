"""Training: the trainer and its collaborators (optimiser, schedule, checkpoints of a run)."""
