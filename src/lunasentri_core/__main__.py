"""``python -m lunasentri_core``: the ``lunasentri`` command."""

from lunasentri_core.cli import main

main()
