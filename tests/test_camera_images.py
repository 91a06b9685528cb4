"""Tests for pipelines.cameras.images: one read per image gives the colour and the alpha that
load_views and load_masks used to read separately (the optimiser loads both at once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.cameras.images as images_mod
from pipelines.cameras import Cameras, orbit_poses
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.images import (
    load_masks,
    load_views,
    load_views_and_masks,
    read_image,
    read_view,
)
from pipelines.errors import InputError

SPOT = Path(__file__).parents[1] / "examples" / "spot"


def _former_reads(path: Path, background):
    """The two reads load_views and load_masks made before: colour composited on the
    background, and the alpha channel from a second read."""
    arr, has_alpha = read_image(path)
    x = torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0
    rgb = x[:3] * x[3:4] + torch.tensor(background).view(3, 1, 1) * (1.0 - x[3:4])
    arr2, _ = read_image(path)
    alpha = torch.from_numpy(arr2[..., 3:]).permute(2, 0, 1) / 255.0
    return (rgb if has_alpha else x[:3].contiguous()), (alpha if has_alpha else None)


def _rgba(tmp_path: Path, w: int = 60, h: int = 40, alpha: bool = True, name: str = "v.png"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (h, w, 4 if alpha else 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / name)
    return tmp_path / name


def _cams(paths, w: int = 60, h: int = 40) -> Cameras:
    k = torch.tensor([[50.0, 0.0, w / 2], [0.0, 50.0, h / 2], [0.0, 0.0, 1.0]])
    return Cameras(orbit_poses([0.0] * len(paths), [0.0] * len(paths)), k, w, h, paths)


@pytest.mark.parametrize("background", [(1.0, 1.0, 1.0), (0.2, 0.5, 1.0)])
def test_read_view_is_the_former_two_reads(tmp_path: Path, background) -> None:
    for path in (SPOT / "train" / "003.png", _rgba(tmp_path)):
        rgb, alpha = read_view(path, background)
        rgb0, alpha0 = _former_reads(path, background)
        assert rgb.shape[0] == 3 and alpha.shape[0] == 1
        assert torch.equal(rgb, rgb0) and torch.equal(alpha, alpha0)
    rgb, alpha = read_view(_rgba(tmp_path, alpha=False, name="rgb.png"), background)
    assert alpha is None and torch.equal(rgb, _former_reads(tmp_path / "rgb.png", background)[0])


@pytest.mark.parametrize("size", [64, None])
def test_views_and_masks_in_one_read_equal_the_two_loaders(size, monkeypatch) -> None:
    cams = load_transforms(SPOT / "transforms_train.json").subset([0, 5, 11])
    images, used = load_views(cams, size)
    masks = load_masks(cams, size)
    calls = []
    real = images_mod.read_image
    monkeypatch.setattr(images_mod, "read_image", lambda p: calls.append(p) or real(p))
    images1, masks1, used1 = load_views_and_masks(cams, size)
    assert calls == cams.image_paths  # each file read once
    assert torch.equal(images1, images) and torch.equal(masks1, masks)
    assert torch.equal(used1.K, used.K) and torch.equal(used1.c2w, used.c2w)


@pytest.mark.parametrize("size", [30, None, 97])
def test_views_and_masks_non_square(tmp_path: Path, size) -> None:
    cams = _cams([_rgba(tmp_path)])
    images, masks, used = load_views_and_masks(cams, size, background=(0.2, 0.5, 1.0))
    assert torch.equal(images, load_views(cams, size, background=(0.2, 0.5, 1.0))[0])
    assert torch.equal(masks, load_masks(cams, size))
    assert torch.equal(used.K, load_views(cams, size)[1].K)
    side = 60 if size is None else size
    assert masks.shape == (1, side, side) and float(masks[0, 0, 0]) == 0.0  # padded with 0


def test_views_without_alpha(tmp_path: Path) -> None:
    paths = [_rgba(tmp_path, name="a.png"), _rgba(tmp_path, alpha=False, name="b.png")]
    cams = _cams(paths)
    images, masks, _ = load_views_and_masks(cams, 30, require_alpha=False)
    assert masks is None and torch.equal(images, load_views(cams, 30)[0])
    with pytest.raises(InputError, match="b.png: the image has no alpha channel"):
        load_views_and_masks(cams, 30)
    with pytest.raises(InputError, match="b.png: the image has no alpha channel"):
        load_masks(cams, 30)
    # a size error is reported before a missing alpha, as load_views then load_masks did
    _rgba(tmp_path, w=40, h=40, name="c.png")
    bad = _cams([paths[1], tmp_path / "c.png"])
    with pytest.raises(InputError, match="c.png: image is 40x40"):
        load_views_and_masks(bad, 30)
