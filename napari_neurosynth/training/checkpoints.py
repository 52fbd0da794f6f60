"""Checkpoints without pickles: tensors in ``checkpoint.safetensors``, the rest in ``checkpoint.json``.

Both files are written to a temporary name and renamed, so an interrupted write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import NeurosynthError


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimiser state as (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors, plain = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        plain["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
                plain["state"][str(idx)][k] = "tensor"
            else:
                plain["state"][str(idx)][k] = v
    return tensors, plain


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, plain: dict) -> None:
    state = {}
    for idx, st in plain["state"].items():
        state[int(idx)] = {k: (tensors[f"{prefix}.state.{idx}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_checkpoint(folder: Path, nets: dict, opts: dict, meta: dict, extra: dict | None = None) -> None:
    """Write ``checkpoint.safetensors`` + ``checkpoint.json`` atomically (weights, optimisers, RNG, step)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, net in nets.items():
        for k, v in net.state_dict().items():
            tensors[f"net.{key}.{k}"] = v.detach().cpu().contiguous().clone()
    opt_plain = {}
    for key, opt in opts.items():
        t, p = _flatten_optimizer(f"opt.{key}", opt)
        tensors.update(t)
        opt_plain[key] = p
    tensors["rng.torch"] = torch.get_rng_state()
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
    # weights first, then the JSON that points at them: each file is whole or absent
    try:
        with atomic_path(folder / "checkpoint.safetensors") as tmp:
            save_file(tensors, str(tmp))
        atomic_write_text(folder / "checkpoint.json", json.dumps({**meta, "optimizers": opt_plain}, indent=1))
    except NeurosynthError:
        raise
    except Exception as exc:  # OSError, or safetensors' own error wrapping one (a full disk)
        raise NeurosynthError(f"cannot write a checkpoint to {folder}: {exc}") from None


def load_checkpoint(folder: Path, nets: dict, opts: dict) -> dict:
    """Restore networks, optimisers and torch's RNG from ``folder``; return the JSON metadata."""
    from safetensors.torch import load_file

    st, js = folder / "checkpoint.safetensors", folder / "checkpoint.json"
    if not (st.is_file() and js.is_file()):
        raise NeurosynthError(
            f"--resume: no checkpoint in {folder} (expected checkpoint.safetensors and checkpoint.json)"
        )
    tensors = load_file(str(st))
    meta = json.loads(js.read_text())
    for key, net in nets.items():
        prefix = f"net.{key}."
        net.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    for key, opt in opts.items():
        _restore_optimizer(f"opt.{key}", opt, tensors, meta["optimizers"][key])
    torch.set_rng_state(tensors["rng.torch"])
    meta["extra_tensors"] = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta
