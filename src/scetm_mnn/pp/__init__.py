"""scetm_mnn.pp."""
