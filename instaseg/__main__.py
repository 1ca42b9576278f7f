"""``python -m instaseg`` is the ``instaseg`` command."""

from instaseg.cli import main

main()
