"""Errors reported to a user as one clear message (the CLI prints them without a traceback)."""


class ConnectivityError(Exception):
    """Base of every error whose message tells the user what went wrong and what to do."""


class InputError(ConnectivityError, ValueError):
    """Inputs, targets or points that cannot be used as given (wrong dtype, range or shape)."""


class OptionsError(ConnectivityError, ValueError):
    """An option value outside what the path search accepts."""
