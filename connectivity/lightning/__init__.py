"""Lightning layers over the engine: the pivots module, the ddp_pairs strategy, progress output."""
