"""The model: transformers' Higgs Audio v2 plus the Whisper tower, its loss, parts, presets, LoRA and builder."""
