"""scetm_mnn.tl."""
