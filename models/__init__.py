"""Shipped model bundles (installed as ``napari_neurosynth.shipped_models``).

Each sub-folder is a bundle: ``card.json`` and ``weights.safetensors``. They are
trained on the synthetic brain phantom only; see docs/models.md.
"""
