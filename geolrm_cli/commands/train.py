"""Train GeoLRM from scratch or fine-tune the released weights on folders of posed objects.

Examples:

  geolrm train objects/ -o runs/mine --size 224 --max-steps 2000

  geolrm train objects/ -o runs/ft --init geolrm --lr 2e-5 --max-steps 500

  geolrm train objects/ -o runs/both --stage both --config model.json --val held_out/

  geolrm train objects/ -o runs/mine --resume

  geolrm train objects/ -o runs/ddp --devices 8 --num-nodes 4 --precision bf16-mixed
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from pipelines.train.config import TrainConfig

_DEFAULTS = TrainConfig()


class Stage(str, Enum):
    proposal = "proposal"
    reconstruction = "reconstruction"
    both = "both"


class Accelerator(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Precision(str, Enum):
    fp32 = "32"
    bf16 = "bf16-mixed"
    fp16 = "16-mixed"


def _views_in(text: str) -> tuple[int, int]:
    from pipelines.errors import InputError

    lo, sep, hi = text.partition("-")
    try:
        pair = (int(lo), int(hi if sep else lo))
    except ValueError:
        raise InputError(f"--views-in {text!r}: give MIN-MAX (e.g. 1-7) or one number") from None
    return pair


def train(
    data: list[Path] = typer.Argument(
        ...,
        help="Object folders (transforms_train.json or transforms.json + RGBA views, optional "
        "depth PNGs, points.npy or a mesh; or G-Objaverse view folders), or folders of them.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="The run folder."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Architecture JSON (dino / serializer / lrm_generator, as recon --config); "
        "default: the released GeoLRM's (or --init's).",
    ),
    stage: Stage = typer.Option(
        Stage(_DEFAULTS.stage),
        "--stage",
        help="proposal (occupancy network), reconstruction, or both (the proposal network, "
        "then the reconstruction stage on its anchors).",
    ),
    max_steps: int = typer.Option(
        _DEFAULTS.max_steps, "--max-steps", min=1, help="Optimiser steps (each stage)."
    ),
    batch_size: int = typer.Option(
        _DEFAULTS.batch_size, "--batch-size", min=1, help="Objects per step and device."
    ),
    accumulate: int = typer.Option(
        _DEFAULTS.accumulate, "--accumulate", min=1, help="Micro-batches per optimiser step."
    ),
    size: int = typer.Option(
        _DEFAULTS.size, "--size", min=14, help="Input and render size, px (multiple of 14)."
    ),
    views_in: str = typer.Option(
        "-".join(map(str, _DEFAULTS.views_in)),
        "--views-in",
        help="Input views per sample, MIN-MAX (drawn per batch: dynamic-view training).",
    ),
    views_out: int = typer.Option(
        _DEFAULTS.views_out, "--views-out", min=1, help="Target views rendered per sample."
    ),
    lr: float | None = typer.Option(
        _DEFAULTS.lr,
        "--lr",
        help="Peak learning rate (default: 2e-4 proposal, 1e-4 reconstruction).",
    ),
    init: str | None = typer.Option(
        _DEFAULTS.init,
        "--init",
        help="Start from a checkpoint file, or `geolrm` for the released weights "
        "(`geolrm weights download geolrm`).",
    ),
    freeze_encoder: bool = typer.Option(
        _DEFAULTS.freeze_encoder, "--freeze-encoder", help="Keep the DINOv2 backbones fixed."
    ),
    devices: int = typer.Option(
        _DEFAULTS.devices, "--devices", min=1, help="Devices per node (DDP above 1)."
    ),
    num_nodes: int = typer.Option(
        _DEFAULTS.num_nodes, "--num-nodes", min=1, help="Nodes (torchrun / SLURM)."
    ),
    accelerator: Accelerator = typer.Option(
        Accelerator(_DEFAULTS.accelerator), "--accelerator", help="auto, cpu or gpu."
    ),
    precision: Precision = typer.Option(
        Precision(_DEFAULTS.precision), "--precision", help="32, bf16-mixed or 16-mixed (GPU)."
    ),
    val: list[Path] | None = typer.Option(
        None,
        "--val",
        help="Objects to validate on (default: the training objects). Inputs are views of "
        "each object's training split, targets views of its transforms_test.json (never "
        "trained on); objects without one (G-Objaverse) use other training-split views.",
    ),
    val_every: int = typer.Option(
        _DEFAULTS.val_every, "--val-every", min=0, help="Steps between validations (0: none)."
    ),
    checkpoint_every: int = typer.Option(
        _DEFAULTS.checkpoint_every, "--checkpoint-every", min=1, help="Steps between checkpoints."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in -o from its last checkpoint."
    ),
    seed: int = typer.Option(
        _DEFAULTS.seed, "--seed", help="Seeds the initialisation and the data."
    ),
) -> None:
    """Train GeoLRM (from scratch, or fine-tune with --init) on folders of posed objects.

    Writes OUTPUT/geolrm.safetensors (official key names) and OUTPUT/config.json at every checkpoint: `geolrm recon VIEWS --checkpoint OUTPUT/geolrm.safetensors --config OUTPUT/config.json` loads them. Checkpoints (OUTPUT/checkpoints), TensorBoard and CSV logs (OUTPUT/logs). Ctrl-C keeps the last complete checkpoint; --resume continues exactly.

    Examples:

      geolrm train objects/ -o runs/mine --size 224 --max-steps 2000

      geolrm train objects/ -o runs/ft --init geolrm --lr 2e-5 --max-steps 500

      geolrm train objects/ -o runs/both --stage both --config model.json --val held_out/

      geolrm train objects/ -o runs/ddp --devices 8 --num-nodes 4 --precision bf16-mixed
    """
    import logging

    from geolrm_cli.console import console
    from pipelines.train.engine import train as run_training

    for name in ("lightning.pytorch", "lightning.fabric"):  # its set-up chatter; warnings stay
        logging.getLogger(name).setLevel(logging.WARNING)

    cfg = TrainConfig(
        stage=stage.value,
        max_steps=max_steps,
        batch_size=batch_size,
        accumulate=accumulate,
        size=size,
        views_in=_views_in(views_in),
        views_out=views_out,
        lr=lr,
        init=init,
        freeze_encoder=freeze_encoder,
        devices=devices,
        num_nodes=num_nodes,
        accelerator=accelerator.value,
        precision=precision.value,
        val_every=val_every,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    result = run_training(
        data,
        output,
        cfg,
        model_config=config,
        val=val,
        resume=resume,
        on_note=lambda msg: console.print(f"note: {msg}", soft_wrap=True, markup=False),
    )
    steps = ", ".join(f"{k} {v} steps" for k, v in result.steps.items())
    console.print(
        f"done: {steps} -> {result.weights} + {result.config.name}", soft_wrap=True, markup=False
    )
