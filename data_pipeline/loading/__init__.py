"""Training-time data: datasets (prepared or in memory), reference choice and swaps, samplers, collator."""
