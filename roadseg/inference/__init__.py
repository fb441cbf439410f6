"""Inference shared by training figures, evaluation and serving: predict, upsample, render."""
