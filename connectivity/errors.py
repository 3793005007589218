"""Errors reported to a user as one clear message (the CLI prints them without a traceback)."""


class ConnectivityError(Exception):
    """Base of every error whose message tells the user what went wrong and what to do."""
