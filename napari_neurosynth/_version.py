"""The package version: the one place it is written.

``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``) and
``napari_neurosynth.__version__`` re-exports it.
"""

__version__ = "0.1.0"
