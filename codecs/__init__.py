"""Audio core."""
