"""Training of the small policies we ship (reproducible from a config and a seed)."""
