"""Model contracts, backends, pre/post-processing and the demo models."""
