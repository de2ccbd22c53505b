"""Dev tooling, not part of the running product: the local stack, simulator, demo, bench and naive baseline."""
