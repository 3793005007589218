"""The checks that the path and the graph runs' input draws share.

:class:`~connectivity.runs.pairs.PairSampling` (``pairs:``) and
:class:`~connectivity.runs.inputs.ClassInputs` (``inputs:``) both draw dataset inputs with a
seed from one split; their options are checked at construction, so a bad value fails in one
line before any work or run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from connectivity.data import SPLITS
from connectivity.errors import ConnectivityError


class PairError(ConnectivityError, ValueError):
    """Pairs or inputs that cannot be used (different labels, out of range, too few)."""


def is_whole(value: Any) -> bool:
    """Whether ``value`` is an integer; ``True`` is not (``count: true`` is a mistake)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class InputDraw:
    """The checks of a draw's options, for dataclasses with a ``split`` field.

    ``OPTION`` is the config block the messages name (``pairs`` or ``inputs``). A dataclass
    without fields of its own: the fields (and their order) are the subclass's, and the
    command line still reads a subclass as a plain dataclass, not as a class to choose.
    """

    OPTION: ClassVar[str]

    def check_whole(self, name: str, minimum: int, least: str = "", then: str = "") -> None:
        """Raise :class:`PairError` unless the field ``name`` is a whole number >= ``minimum``.

        Args:
            name: The field.
            minimum: Its smallest allowed value.
            least: How the message states the minimum (default: the number).
            then: Words after the given value, e.g. ``"; set how many pairs to draw"``.
        """
        value = getattr(self, name)
        if not is_whole(value) or value < minimum:
            raise PairError(
                f"{self.OPTION}.{name} must be a whole number >= {least or minimum}, got "
                f"{value!r}{then}"
            )

    def check_split(self) -> None:
        """Raise :class:`PairError` unless ``split`` is ``train``, ``val`` or ``test``."""
        split = getattr(self, "split")  # noqa: B009 (a field of the subclass)
        if split not in SPLITS:
            choices = ", ".join(SPLITS)
            raise PairError(f"{self.OPTION}.split must be one of {choices}, got {split!r}")
