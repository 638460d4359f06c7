"""Encoding once, offline: a manifest -> a prepared set (utterance shards, indexes, rejects)."""
