"""Media helpers shared by the legs: draining a jitter buffer into exact frames."""
