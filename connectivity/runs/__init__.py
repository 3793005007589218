"""Path and graph experiments and the run-folder store."""
