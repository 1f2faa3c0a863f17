"""scetm_mnn.model."""
