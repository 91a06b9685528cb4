"""Reading a weights file into a state dict: ``.safetensors``, or a plain-tensor torch pickle.

The one checkpoint-file reader of the stages that load plain state dicts (the multi-view
models, LPIPS). Pickles are read with ``torch.load(weights_only=True)`` (tensors and plain
containers only, no code), memory-mapped where the file allows it; a checkpoint that wraps its
weights in ``{"state_dict": ...}`` (Lightning) is unwrapped. Unreadable files raise an
:class:`~pipelines.errors.InputError` with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipelines.errors import InputError

__all__ = ["load_state_dict"]


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict stored in ``path`` (``.safetensors`` or a torch pickle).

    Raises:
        InputError: the file is missing, unreadable (corrupt, truncated, not weights) or holds
            something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: cannot read the weights ({first})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise InputError(f"{path}: not a state dict")
    return sd
