"""LPIPS weights for the tests: the real lpips v0.1 VGG heads (fixture) and a random VGG16 trunk
in torchvision's layout, laid out in the weights caches where the registry looks for them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines import weights
from pipelines.lpips import HEADS_WEIGHTS, TRUNK_WEIGHTS, VGG16_LAYERS

HEADS = Path(__file__).parent / "fixtures" / "lpips" / "vgg_v0.1.pth"


def heads() -> dict[str, torch.Tensor]:
    """The fixture's five ``lin{k}.model.1.weight`` heads."""
    return torch.load(HEADS, map_location="cpu", weights_only=True)


def random_trunk(seed: int = 0) -> dict[str, torch.Tensor]:
    """VGG16 convolutions named as torchvision's (``features.N.weight`` / ``.bias``), He-scaled
    so the features neither vanish nor explode through the 13 layers."""
    gen = torch.Generator().manual_seed(seed)
    state, i, c_in = {}, 0, 3
    for v in VGG16_LAYERS:
        if v == "M":
            i += 1
            continue
        std = (2.0 / (9 * c_in)) ** 0.5
        state[f"features.{i}.weight"] = torch.randn(v, c_in, 3, 3, generator=gen) * std
        state[f"features.{i}.bias"] = torch.randn(v, generator=gen) * 0.05
        i, c_in = i + 2, v
    return state


def install(trunk: dict[str, torch.Tensor] | None, with_heads: bool = True) -> None:
    """Put ``trunk`` (as the hub's ``model.safetensors`` at the pinned revision) and the heads
    fixture where :func:`pipelines.weights.local_path` finds them; the caches are the ones the
    environment names now (point ``HF_HUB_CACHE`` / ``GEOLRM_CACHE`` at a temp dir first)."""
    if trunk is not None:
        a = weights.artifact(TRUNK_WEIGHTS)
        snap = weights.cache_location(a) / "snapshots" / a.revision
        snap.mkdir(parents=True, exist_ok=True)
        save_file(trunk, str(snap / a.files[0].path))
    if with_heads:
        a = weights.artifact(HEADS_WEIGHTS)
        folder = weights.cache_location(a)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / a.files[0].path).write_bytes(HEADS.read_bytes())
