"""Data side of the trainer: audio files and transcripts in, voice-cloning batches out. Knows nothing of DeepSpeed."""
