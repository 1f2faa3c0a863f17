"""scetm_mnn.train."""
