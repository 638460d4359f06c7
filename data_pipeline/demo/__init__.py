"""The demo's local speech: eSpeak NG synthesis and a small multi-speaker corpus."""
