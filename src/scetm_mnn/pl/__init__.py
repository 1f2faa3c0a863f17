"""scetm_mnn.pl."""
