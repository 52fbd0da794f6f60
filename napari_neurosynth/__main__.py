"""``python -m napari_neurosynth ...`` runs the ``neurosynth`` command (for environments without the console script)."""

import sys

from .cli import main

if __name__ == "__main__":  # importing this module (doctest collection, tools) must not run the CLI
    sys.exit(main())
