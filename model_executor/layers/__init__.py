"""Building blocks of the Helios transformer: norms, attention, RoPE, embeddings."""
