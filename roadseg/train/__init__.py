"""Training: the loop, its set-up and its checkpoint state."""
