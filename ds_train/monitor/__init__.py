"""Training health and metrics: the health checks, their monitor, grad norms, safe decoding, step metrics."""
