"""``python -m connectivity.cli``: the same as the ``connectivity`` command."""

from connectivity.cli.main import main

main()
