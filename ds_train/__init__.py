"""DeepSpeed trainer for Higgs Audio v2 zero-shot voice cloning."""
