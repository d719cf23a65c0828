"""``python -m cli``: the ``coopr-pipeline`` command, for workers started by path-less tools."""

from cli.app import main

main()
