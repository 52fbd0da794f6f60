"""Training: paired / unpaired / MCSR loops, checkpoints, validation, held-out evaluation and bundle export.

One module per role:

- :mod:`.config`: :class:`TrainConfig`, what defines a run;
- :mod:`.loop`: :class:`Trainer` (data, networks per mode, the step, ``fit``) and :class:`ImagePool`;
- :mod:`.checkpoints`: pickle-free checkpoints for ``--resume``;
- :mod:`.validation`: per-epoch validation on validation subjects;
- :mod:`.heldout`: held-out metrics against the baselines, and the evaluation grid of the cards;
- :mod:`.export`: the card and the bundle folder;
- :mod:`.distributed`: several processes under ``torchrun`` (DDP) and mixed precision.
"""

from .checkpoints import load_checkpoint, save_checkpoint
from .config import LICENSE, MODES, TrainConfig, command_line
from .export import export_bundle, training_card
from .heldout import METRIC_KEYS, evaluate_bundle, evaluate_grid, evaluate_grids, fit_lut, grid_cells, shipping_rule
from .loop import ImagePool, Trainer, build_generator
from .validation import predict_stack, validate

__all__ = [
    "LICENSE",
    "METRIC_KEYS",
    "MODES",
    "ImagePool",
    "TrainConfig",
    "Trainer",
    "build_generator",
    "command_line",
    "evaluate_bundle",
    "evaluate_grid",
    "evaluate_grids",
    "export_bundle",
    "fit_lut",
    "grid_cells",
    "load_checkpoint",
    "predict_stack",
    "save_checkpoint",
    "shipping_rule",
    "training_card",
    "validate",
]
