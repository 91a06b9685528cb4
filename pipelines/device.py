"""Device selection and routing: CUDA, then Apple's MPS, then the CPU; ``--device`` overrides.

Routing (decided here only, :func:`stage_device`): the networks -- the multi-view diffusion
models and GeoLRM -- run on the chosen device. The rasteriser, TSDF fusion and the optimiser
(and so turntables, mesh renders, refinement and evaluation) run there on CUDA, but take their
CPU paths on MPS: gsplat is CUDA-only and the numba kernels are CPU-only. Tensors are moved to
the CPU explicitly at those stages.

Operations MPS lacks: torch runs them on the CPU itself when ``PYTORCH_ENABLE_MPS_FALLBACK=1``
is in the environment *when torch is imported* (it is read once, while torch registers its MPS
kernels; setting it later does nothing). :func:`enable_mps_fallback` sets it from the CLI
before torch is first imported. Where a network stage still raises ``NotImplementedError``,
:func:`run_stage` prints one note and reruns that stage on the CPU.

Nothing here has been run on Apple hardware; the tests check the routing with CPU stand-ins.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import TypeVar

from pipelines.errors import InputError, note

# torch is imported inside the functions that need it: the CLI imports this module, and
# enable_mps_fallback must run before torch is first imported.

T = TypeVar("T")

MPS_FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"

#: stage -> where it runs when the device is MPS (on CPU and CUDA every stage stays put)
MPS_ROUTE: Mapping[str, str] = {
    "diffusion": "mps",  # Zero123++ / SV3D, fp16 (see diffusion_dtype)
    "geolrm": "mps",  # GeoLRM, fp32
    "raster": "cpu",  # numba rasteriser (turntables, mesh renders, visibility, evaluation)
    "tsdf": "cpu",  # numba TSDF fusion
    "optimize": "cpu",  # refinement / per-scene optimisation (numba rasteriser and its backward)
}


def device_type(device) -> str:
    """``"cuda"`` for ``cuda:1``, ``"mps"`` for ``mps`` / ``torch.device("mps")``, ..."""
    return str(device).split(":", 1)[0]


def mps_available() -> bool:
    """Whether torch can use Apple's Metal GPU here (False on torch builds without MPS)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | None = None) -> str:
    """Return a torch device string.

    Args:
        name: None or "auto" picks ``cuda`` when available, else ``mps`` (Apple Silicon) when
            available, else ``cpu``; "cpu", "cuda", "cuda:N", "mps" are checked.

    Raises:
        InputError: a CUDA or MPS device was asked for on a machine without one.
    """
    import torch

    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {name} asked for a CUDA GPU but none is available; "
                "use --device cpu (or install a CUDA build of torch)"
            )
        return name
    if name in ("mps", "mps:0"):
        if not mps_available():
            raise InputError(
                f"--device {name} asked for Apple's Metal GPU (MPS) but it is not available here "
                "(it needs Apple Silicon, macOS 12.3+ and a torch build with MPS); "
                "use --device cpu"
            )
        return "mps"
    raise InputError(f"unknown device {name!r}; use auto, cpu, cuda[:N] or mps")


def stage_device(device, stage: str) -> str:
    """Where ``stage`` runs for the chosen ``device``: itself, except on MPS, where the
    rasteriser, TSDF fusion and optimiser take the CPU (:data:`MPS_ROUTE`).

    Args:
        device: a resolved device (string or ``torch.device``).
        stage: a key of :data:`MPS_ROUTE`.
    """
    if stage not in MPS_ROUTE:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(MPS_ROUTE)}")
    if device_type(device) == "mps":
        return MPS_ROUTE[stage]
    return str(device)


def diffusion_dtype(device):
    """The diffusion models' dtype for ``--precision auto``: fp16 on CUDA and MPS, fp32 on the
    CPU (fp16 kernels there are slow or missing)."""
    import torch

    return torch.float16 if device_type(device) in ("cuda", "mps") else torch.float32


def missing_op(error: BaseException) -> str:
    """The operator named in torch's not-implemented message (``aten::foo``), or a phrase."""
    found = re.search(r"'((?:aten|torchvision|prims)::[\w.]+)'", str(error))
    return found.group(1) if found else "an operation"


def run_stage(label: str, device: str, fn: Callable[[str], T]) -> T:
    """``fn(device)``; on MPS, a ``NotImplementedError`` (an operation MPS lacks, with torch's
    own CPU fallback off) becomes one note and ``fn("cpu")`` reruns the stage on the CPU.

    ``fn`` must do the whole stage from its inputs (move the model and tensors to the device it
    is given, seed, run), so that the rerun does not depend on what the failed attempt left.
    On any other device the error propagates.
    """
    try:
        return fn(device)
    except NotImplementedError as e:
        if device_type(device) != "mps":
            raise
        reason = missing_op(e)
    note(f"{label}: {reason} is not implemented on MPS; rerunning it on the CPU")
    return fn("cpu")


def _asked_device(argv: Sequence[str]) -> str:
    """The value of the last ``--device`` in ``argv`` ("auto" when absent)."""
    value = "auto"
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--device="):
            value = arg.split("=", 1)[1]
    return value


def enable_mps_fallback(
    argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None
) -> bool:
    """Set ``PYTORCH_ENABLE_MPS_FALLBACK=1`` (unless the user set it) when the command line asks
    for ``--device mps`` or ``auto`` (the default). Must run before torch is imported: torch
    reads the variable once, at import. Harmless where there is no MPS.

    Returns:
        Whether the variable was set here.
    """
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if MPS_FALLBACK_ENV in environ or _asked_device(argv) not in ("auto", "mps", "mps:0"):
        return False
    environ[MPS_FALLBACK_ENV] = "1"
    return True


def mps_fallback_on(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``PYTORCH_ENABLE_MPS_FALLBACK`` is set to a non-zero number (it only takes effect
    if it was set before torch was imported)."""
    value = (os.environ if environ is None else environ).get(MPS_FALLBACK_ENV, "").strip()
    try:
        return int(value) != 0
    except ValueError:
        return False


def mps_note() -> str:
    """The one line shown when a command runs on MPS."""
    fallback = (
        "operations MPS lacks run on the CPU (PYTORCH_ENABLE_MPS_FALLBACK=1)"
        if mps_fallback_on()
        else "a network stage that hits an operation MPS lacks is rerun on the CPU"
    )
    return (
        "running on Apple's MPS (untested on Apple hardware): the diffusion models and GeoLRM "
        f"on MPS; rasteriser, TSDF fusion and optimiser on the CPU; {fallback}"
    )
