"""Settings of ``geolrm train``: one dataclass owns every default (the CLI's options read them,
``tests/test_cli_defaults.py`` checks it), each with where it comes from.

The official recipes (``configs/srl-bf16.yaml`` for the proposal network,
``configs/geolrm-train.yaml`` for the reconstruction stage, and their Lightning modules
``src/serializer_wrapper.py`` / ``src/geolrm_wrapper.py``) set AdamW with betas (0.9, 0.95)
and weight decay 0.05, a cosine schedule after a cosine warm-up that floors at 0.1 % of the
learning rate, gradient clipping at 10 (proposal) / 4 (reconstruction), 448 px inputs, 4096
anchors while training, and 8 target views per object.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.errors import InputError

__all__ = ["ANCHOR_SOURCES", "PRECISIONS", "STAGES", "ReconLossWeights", "TrainConfig"]

STAGES = ("proposal", "reconstruction", "both")
#: Where the reconstruction stage's anchors come from: ``proposal`` (the proposal network, as the
#: official training), ``occupancy`` (the ground-truth occupancy grid: training from scratch
#: without a trained proposal network), ``auto`` (the proposal network when it was trained or
#: loaded, else the ground truth).
ANCHOR_SOURCES = ("auto", "proposal", "occupancy")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class ReconLossWeights:
    """The reconstruction loss's weights (official ``configs/geolrm-train.yaml`` and the
    defaults of ``src/geolrm_wrapper.py``). A weight of 0 skips its term."""

    mse: float = 1.0
    lpips: float = 2.0
    mask: float = 1.0
    depth: float = 0.2
    depth_tv: float = 0.05


@dataclass
class TrainConfig:
    """Everything a training run is set by (saved as ``train.json`` in the run folder).

    Attributes:
        stage: ``proposal``, ``reconstruction`` or ``both`` (proposal first, then the
            reconstruction stage on the trained proposal network's anchors).
        max_steps: optimiser steps (of each stage for ``both``).
        batch_size: objects per step and device.
        accumulate: micro-batches per optimiser step (official reconstruction: 8).
        size: input and render size in pixels (a multiple of 14; official 448).
        views_in: (min, max) input views per sample, drawn per batch (paper: dynamic views).
        views_out: target views rendered and supervised per sample.
        lr: peak learning rate (official: 2e-4 proposal, 1e-4 reconstruction); None picks the
            stage's official value.
        warmup_steps: cosine warm-up steps; None = 5 % of ``max_steps`` (official 12k of 100k
            for the reconstruction stage, 500 for the proposal network).
        weight_decay, betas: AdamW's.
        grad_clip: gradient-norm clip; None = the stage's official value.
        min_lr_ratio: floor of the schedule, times ``lr`` (official 0.001).
        precision: Lightning precision: ``32``, ``bf16-mixed`` or ``16-mixed``.
        accelerator, devices, num_nodes: Lightning's (torchrun / SLURM are detected by it).
        seed: seeds the initialisation and every random draw of the data.
        init: checkpoint to start from (a file, or ``geolrm`` for the released weights); None
            trains from scratch.
        freeze_encoder: keep the DINOv2 backbones fixed.
        attention: self-attention mode; None = ``official`` when fine-tuning from ``init``
            (the released model was trained that way), ``standard`` from scratch.
        grad_checkpointing: recompute each transformer block in the backward pass (official
            ``use_checkpoint: true``): less memory, about a third more compute.
        anchors: see :data:`ANCHOR_SOURCES`.
        max_anchors: anchors per object while training (official 4096).
        checkpoint_every: steps between checkpoints (and exports of the weights).
        val_every: steps between validations; 0 = never. A validation renders one fixed
            sample per object: input views from its training split, target views from its
            held-out split (``transforms_test.json``) where it has one, else other views of
            its training split (:mod:`pipelines.train.engine`).
        val_objects: objects validated (the first ones of the validation set: ``--val``'s
            objects, else the training objects).
        log_every: steps between logged rows.
        workers: data-loading processes per device.
        lpips: use the LPIPS term when its weights are on disk.
        loss: the reconstruction loss's weights.
    """

    stage: str = "reconstruction"
    max_steps: int = 1000
    batch_size: int = 1
    accumulate: int = 1
    size: int = 448
    views_in: tuple[int, int] = (1, 7)
    views_out: int = 4
    lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = None
    min_lr_ratio: float = 0.001
    precision: str = "32"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    seed: int = 0
    init: str | None = None
    freeze_encoder: bool = False
    attention: str | None = None
    grad_checkpointing: bool = True
    anchors: str = "auto"
    max_anchors: int = 4096
    checkpoint_every: int = 500
    val_every: int = 500
    val_objects: int = 4
    log_every: int = 10
    workers: int = 0
    lpips: bool = True
    loss: ReconLossWeights = field(default_factory=ReconLossWeights)

    # -- per-stage official values ---------------------------------------------------------

    def stage_lr(self, stage: str) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 2e-4 if stage == "proposal" else 1e-4

    def stage_grad_clip(self, stage: str) -> float:
        if self.grad_clip is not None:
            return float(self.grad_clip)
        return 10.0 if stage == "proposal" else 4.0

    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return max(1, round(0.05 * self.max_steps))

    def attention_mode(self) -> str:
        if self.attention is not None:
            return self.attention
        return "official" if self.init is not None else "standard"

    # -- checks and files -----------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`InputError` (one line, with the fix) for an impossible setting."""
        if self.stage not in STAGES:
            raise InputError(f"--stage must be one of {', '.join(STAGES)}; got {self.stage!r}")
        if self.anchors not in ANCHOR_SOURCES:
            raise InputError(f"anchors must be one of {', '.join(ANCHOR_SOURCES)}")
        if self.precision not in PRECISIONS:
            raise InputError(
                f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
            )
        lo, hi = self.views_in
        if not 1 <= lo <= hi:
            raise InputError(f"--views-in {lo}-{hi}: need 1 <= MIN <= MAX (e.g. 1-7)")
        for name in ("max_steps", "batch_size", "accumulate", "views_out", "devices"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1")
        if self.num_nodes < 1:
            raise InputError("--num-nodes must be at least 1")
        if self.size < 14 or self.size % 14:
            raise InputError(f"--size {self.size} must be a positive multiple of 14 (e.g. 448)")
        if self.max_anchors < 1:
            raise InputError("max_anchors must be at least 1")
        if self.attention not in (None, "official", "standard"):
            raise InputError("attention must be official or standard")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        data = dict(data)
        if "loss" in data and isinstance(data["loss"], dict):
            data["loss"] = ReconLossWeights(**data["loss"])
        for name in ("views_in", "betas"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(f"cannot read the training settings {path} ({e})") from None
