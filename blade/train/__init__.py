"""Training loops: SFT warm-up (and, later, the one alignment loop every objective runs in)."""
