"""Cloning a voice with a trained model (free-running generation); never imports the training loop."""
