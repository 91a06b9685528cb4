"""What the training tests share: Spot whole, from the repository's files (``examples/spot``: 21
training views of 512 px, 12 test views, the cameras, ``points.npy``; ``tests/fixtures/spot_depth``:
the 21 training views' 16-bit depth PNGs, which the example does not ship), and a small
:class:`TrainConfig` (56 px, a few steps, no LPIPS)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipelines.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
DEPTH = ROOT / "tests" / "fixtures" / "spot_depth"


def copy_spot(dst: Path, points: bool = True) -> Path:
    """Spot whole at ``dst``: ``examples/spot``'s cameras and views (train and test), the depth
    PNGs its ``transforms_train.json`` names and, with ``points``, ``points.npy``. Writable
    copies, whatever the checkout's modes (an occupancy cache is written beside an object)."""
    dst.mkdir(parents=True)
    for name in ("transforms_train.json", "transforms_test.json"):
        shutil.copy(SPOT / name, dst)
    for split in ("train", "test"):
        shutil.copytree(SPOT / split, dst / split)
    for p in sorted(DEPTH.glob("*_depth.png")):
        shutil.copy(p, dst / "train")
    if points:
        shutil.copy(SPOT / "points.npy", dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def small_config(**changes) -> TrainConfig:
    """A few steps at 56 px with 1-3 input and 2 target views, 1024 anchors, no LPIPS, a row
    logged every step; ``changes`` override."""
    base = dict(
        max_steps=4,
        size=56,
        views_in=(1, 3),
        views_out=2,
        checkpoint_every=2,
        val_every=0,
        log_every=1,
        lpips=False,
        max_anchors=1024,
    )
    return TrainConfig(**(base | changes))
