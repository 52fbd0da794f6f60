"""Validation during training: the generator over every slice of the validation subjects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data import PreparedSubject


@torch.no_grad()
def predict_stack(
    network: nn.Module, subj: PreparedSubject, inputs: Sequence[str], context: int, batch: int = 16
) -> np.ndarray:
    """Run ``network`` over every slice of a prepared subject, stacked as the engine stacks them."""
    from ..slicing import size_divisor, stack_batch

    network.eval()
    device = next(network.parameters()).device
    S, H, W = subj.mask.shape
    div = size_divisor(network)
    stacks = [subj.arrays[m] for m in inputs]
    out = np.zeros((S, H, W), np.float32)
    for start in range(0, S, batch):
        x = torch.from_numpy(stack_batch(stacks, range(start, min(S, start + batch)), context, div)).to(device)
        out[start : start + x.shape[0]] = network(x).cpu().numpy()[:, 0, :H, :W]
    network.train()
    return out


def validate(network: nn.Module, subjects: Sequence[PreparedSubject], inputs, output, context) -> dict:
    """Mean PSNR/SSIM/MAE inside the brain over the validation subjects (:func:`metrics.evaluate`)."""
    from ..metrics import evaluate

    rows = []
    for subj in subjects:
        pred = predict_stack(network, subj, inputs, context)
        r = evaluate(pred, subj.arrays[output], mask=subj.mask, kspace=False, normalize=False)
        rows.append({"psnr": r["psnr_brain"], "ssim": r["ssim_brain"], "mae": r["mae_brain"], "nmse": r["nmse_brain"]})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
