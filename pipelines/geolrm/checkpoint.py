"""Read and check GeoLRM checkpoints (official key names: ``serializer.*``, ``lrm_generator.*``).

Accepted files:

* ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``: a torch pickle, read with ``weights_only=True`` (no
  code execution), either a flat state dict or a Lightning-style dict with ``state_dict``;
* ``.safetensors``.

The released ``geolrm.ckpt`` comes from a LightningModule that also owns training-only modules
(LPIPS-VGG, SSIM, losses); their keys are dropped (:data:`TRAINING_ONLY_PREFIXES`). DINOv2 keys
are accepted in both transformers naming schemes (4.x ``attention.attention.query`` ...,
5.x ``attention.q_proj`` ...). Anything else that does not match the model is an error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pipelines.errors import InputError, MissingWeightsError
from pipelines.geolrm.dinov2_keys import dinov2_key_to_official

#: Top-level prefixes of training-only modules in official Lightning checkpoints; ignored.
TRAINING_ONLY_PREFIXES = (
    "lpips.",  # torchmetrics LPIPS-VGG (src/geolrm_wrapper.GeoLRM.lpips)
    "lpips_loss.",
    "perceptual_loss.",
    "ssim.",
    "ms_ssim.",
    "loss.",
    "losses.",
    "loss_fn.",
    "criterion.",
)

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _summary(keys, n: int = 5) -> str:
    keys = sorted(keys)
    head = ", ".join(keys[:n])
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"{len(keys)}: {head}{more}"


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Read the raw tensors of a checkpoint file (no key mapping).

    Raises:
        MissingWeightsError: no file at ``path``.
        InputError: unreadable, unsafe (needs arbitrary unpickling) or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"GeoLRM weights not found at {path}; fetch them with `geolrm weights download geolrm` "
            "or pass the path of geolrm.ckpt"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"cannot read safetensors file {path}: {e}") from e
    if suffix not in TORCH_SUFFIXES:
        raise InputError(
            f"unsupported weights file {path.name}; expected .ckpt, .pt, .pth, .bin or .safetensors"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (corrupt zip), ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"cannot load {path} safely (weights_only): {first}; re-save it as a plain state_dict "
            "or .safetensors"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def to_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop training-only keys; rename DINOv2 keys of transformers 5.x to the official 4.x ones."""
    out = {}
    for k, v in state.items():
        if k.startswith(TRAINING_ONLY_PREFIXES):
            continue
        out[dinov2_key_to_official(k)] = v
    return out


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise :class:`InputError` unless ``state`` has exactly the keys and shapes of ``expected``."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_summary(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model) {_summary(mismatched)}")
    if problems:
        raise InputError(
            "checkpoint does not match the GeoLRM config: "
            + "; ".join(problems)
            + " - check that the config (None = released geolrm.yaml) matches the weights"
        )


def load_geolrm_state_dict(path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Read ``path`` and return a state dict (official names) ready for ``model.load_state_dict``.

    Floating tensors are cast to float32 and made contiguous; keys/shapes are checked against
    ``model.state_dict()`` (which may live on the meta device).
    """
    state = to_official_keys(read_state_dict(path))
    expected = model.state_dict()
    check_state_dict(state, expected)
    out = {}
    for k, v in state.items():
        want = expected[k].dtype
        out[k] = v.to(want).contiguous() if v.dtype != want else v.contiguous()
    return out
