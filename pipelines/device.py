"""Device selection: CUDA when present, CPU otherwise; ``--device`` overrides."""

from __future__ import annotations

from pipelines.errors import InputError


def resolve_device(name: str | None = None) -> str:
    """Return a torch device string.

    Args:
        name: None or "auto" picks ``cuda`` when available, else ``cpu``; "cpu", "cuda",
            "cuda:N" are checked.

    Raises:
        InputError: a CUDA device was asked for on a machine without one.
    """
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {name} asked for a CUDA GPU but none is available; "
                "use --device cpu (or install a CUDA build of torch)"
            )
        return name
    raise InputError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
