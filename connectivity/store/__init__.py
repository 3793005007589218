"""The run-folder store: every file a run writes or reads, written atomically, in one place."""
