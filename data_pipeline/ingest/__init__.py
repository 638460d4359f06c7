"""Reading the input: manifest lines, per-row checks, audio decoding and resampling."""
