"""The ``coopr-pipeline`` command line: one module per command group, one that renders.

``python -m cli`` runs it as the console script does.
"""

from cli.app import main

__all__ = ["main"]
