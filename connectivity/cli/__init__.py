"""The `connectivity` command line (entry point ``connectivity.cli:main``)."""

from connectivity.cli.main import main

__all__ = ["main"]
