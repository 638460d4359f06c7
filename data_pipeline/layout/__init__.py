"""One example as tokens: the ChatML layout, special tokens, delay pattern, Whisper features."""
