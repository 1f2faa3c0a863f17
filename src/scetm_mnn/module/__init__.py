"""scetm_mnn.module."""
