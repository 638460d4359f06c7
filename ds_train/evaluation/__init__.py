"""Judging a model: held-out loss, conditioning gain, generation metrics, logged samples, test lists."""
