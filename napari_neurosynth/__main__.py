"""``python -m napari_neurosynth ...`` runs the ``neurosynth`` command (for environments without the console script)."""

import sys

from .cli import main

sys.exit(main())
