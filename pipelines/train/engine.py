"""``geolrm train`` as a library call: data folders -> a run folder with GeoLRM weights.

::

    from pipelines.train.config import TrainConfig
    from pipelines.train.engine import train

    result = train(["objects/"], "runs/mine", TrainConfig(max_steps=2000, size=224))
    # runs/mine/geolrm.safetensors + config.json: geolrm recon --checkpoint ... --config ...

The run folder::

    RUN/
      geolrm.safetensors   the weights, official key names (exported at every checkpoint)
      config.json          the architecture (loads with ``geolrm recon --config``)
      train.json           the TrainConfig of the run
      checkpoints/<stage>/last.ckpt, step-NNNNNN.ckpt   Lightning checkpoints (resume)
      logs/<stage>/        TensorBoard events and metrics.csv

Engine: PyTorch Lightning (as the official): one device, or DDP over ``devices`` x
``num_nodes`` (torchrun and SLURM environments are detected by Lightning), the config's
precision, gradient accumulation and clipping, a checkpoint every ``checkpoint_every`` steps
written atomically (a crash or Ctrl-C leaves the last complete one), TensorBoard and CSV logs,
a rich progress bar, validation every ``val_every`` steps.

Validation: the first ``val_objects`` objects of the validation set (``val``'s objects, else
the training objects), one fixed sample each (4 input views when ``views_in`` allows, else the
nearest bound; ``views_out`` targets), rendered on white and logged as ``val/loss`` and
``val/psnr`` (the proposal stage: ``val/iou``). The inputs are views of the object's training
split; the targets are views of its held-out split (``transforms_test.json`` beside the
training file: views the run never trains on) where it has one, else other views of its
training split (G-Objaverse objects, a lone ``transforms.json``: for the training objects those
are trained on; a note says which objects). The held-out views' depth is used when their
frames name depth files, else the depth term is off for them.

Resuming is exact: the data order is a pure function of (seed, micro-batch index)
(:class:`~pipelines.train.data.StepSampler`), so the resumed run reads from the checkpoint's step
on, and Lightning restores the weights, the optimiser and the schedule.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from pipelines.errors import InputError, MissingWeightsError
from pipelines.geolrm import GeoLRM
from pipelines.io_utils import atomic_path, write_text_atomic
from pipelines.lpips import LPIPS, load_lpips
from pipelines.reconstruct import load_config, resolve_checkpoint
from pipelines.train.config import TrainConfig
from pipelines.train.data import StepSampler, TrainDataset, ViewCounts, find_objects
from pipelines.train.module import GeoLRMTraining

__all__ = ["TrainResult", "export_weights", "train"]

PathLike = str | os.PathLike
WEIGHTS_NAME = "geolrm.safetensors"
CONFIG_NAME = "config.json"
SETTINGS_NAME = "train.json"
#: Sample ids of validation samples start here (apart from any training sample's).
VAL_SAMPLE_BASE = 1 << 40


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder's files and the last logged values."""

    run_dir: Path
    weights: Path
    config: Path
    steps: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- files ------------------------------------------------------------------------------------


def export_weights(model: GeoLRM, run_dir: PathLike) -> tuple[Path, Path]:
    """Write ``geolrm.safetensors`` (official key names) and ``config.json`` atomically.

    ``geolrm recon --checkpoint RUN/geolrm.safetensors --config RUN/config.json`` (and
    :meth:`GeoLRM.from_pretrained`) load them strictly.
    """
    run = Path(run_dir)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    weights = run / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": "geolrm train"})
    config = run / CONFIG_NAME
    write_text_atomic(config, json.dumps(model.config.to_dict(), indent=2) + "\n")
    return weights, config


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file, then renamed: never half-written."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(Path(path)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class _Export(Callback):
    """Exports the weights with every checkpoint (rank 0), and at the end of the stage."""

    def __init__(self, model: GeoLRM, run_dir: Path, every: int) -> None:
        self.model, self.run_dir, self.every = model, run_dir, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step and step % self.every == 0:
            export_weights(self.model, self.run_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            export_weights(self.model, self.run_dir)


class _ContinuedCSV(ExperimentWriter):
    """``metrics.csv`` continued by a resumed run: Lightning's writer deletes an existing file;
    this one keeps its rows of the steps before ``start`` (later ones are logged again)."""

    def __init__(self, log_dir: str, start: int) -> None:
        self._start = start
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if int(row["step"]) < self._start]
            self.metrics_keys = list(reader.fieldnames or [])
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, text.getvalue())


class _CSVLogger(CSVLogger):
    """Lightning's CSV logger, writing through :class:`_ContinuedCSV`."""

    def __init__(self, *args: Any, start: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start = start

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedCSV(self.log_dir, self._start)
        return self._experiment


class _StageBar(RichProgressBar):
    """Lightning's rich bar, described by the stage (training runs by steps, not epochs)."""

    def __init__(self, stage: str) -> None:
        super().__init__(leave=True)
        self.stage = stage

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{self.stage:{len(self.validation_description)}}"


class _StopOnInterrupt(Callback):
    """Ctrl-C (SIGINT) finishes the current step and stops the fit cleanly, so that the run
    ends on a complete checkpoint (Lightning's own handler exits the process instead)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested:
            trainer.should_stop = True


class _TrainData(L.LightningDataModule):
    """The step-indexed training batches (sharded by rank) and the fixed validation samples."""

    def __init__(
        self,
        train: TrainDataset,
        val: TrainDataset | None,
        config: TrainConfig,
        counts: ViewCounts,
        start_batch: int,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set, self.config = train, val, config
        self.counts, self.start_batch = counts, start_batch

    def train_dataloader(self) -> DataLoader:
        cfg = self.config
        if cfg.workers > 0:
            self.train_set.prepare()  # occupancy computed once here; the workers inherit it
        sampler = StepSampler(
            len(self.train_set),
            cfg.batch_size,
            self.counts,
            seed=cfg.seed,
            start=self.start_batch,
            rank=self.trainer.global_rank,
            world=self.trainer.world_size,
        )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            persistent_workers=cfg.workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        cfg = self.config
        lo, hi = cfg.views_in
        n_in = min(max(lo, 4), hi)
        n = min(cfg.val_objects, len(self.val_set)) if self.val_set is not None else 0
        keys = [(i, n_in, VAL_SAMPLE_BASE + i) for i in range(n)]
        return DataLoader(self.val_set, batch_size=1, sampler=keys, num_workers=0)


# -- the run ----------------------------------------------------------------------------------


def _build_model(config: TrainConfig, model_config: dict | PathLike | None) -> GeoLRM:
    if model_config is not None and not isinstance(model_config, dict):
        model_config = load_config(model_config)
    if config.init is not None:
        path = resolve_checkpoint(None if config.init == "geolrm" else config.init)
        model = GeoLRM.from_pretrained(path, config=model_config)
    else:
        torch.manual_seed(config.seed)
        model = GeoLRM.from_config(model_config)
    return model.train()


def _lpips(config: TrainConfig, note: Callable[[str], None]) -> LPIPS | None:
    if not config.lpips or not config.loss.lpips:
        return None
    try:
        return load_lpips()
    except (MissingWeightsError, InputError) as e:
        note(f"LPIPS term off: {e}")
        return None


def _checkpoint_step(path: Path) -> int:
    """The optimiser step a Lightning checkpoint was saved at."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return int(ckpt.get("global_step", 0))


def _stage_anchors(config: TrainConfig, stage: str, trained_proposal: bool) -> str:
    if stage == "proposal":
        return "occupancy"  # the proposal stage reads no anchors
    if config.anchors != "auto":
        return config.anchors
    return "proposal" if trained_proposal else "occupancy"


def _note_validation(
    val_set: TrainDataset, n: int, trained_on: bool, note: Callable[[str], None]
) -> None:
    """One note naming the validated objects whose targets are not held-out views."""
    names = [o.name for o in val_set.objects[:n] if o.held_out is None]
    if not names:
        return
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    seen = ", which the run trains on" if trained_on else ""
    note(
        f"validation: {listed} {'has' if len(names) == 1 else 'have'} no held-out views "
        f"(transforms_test.json); the targets are other views of the training split{seen}"
    )


def _trainer(
    config: TrainConfig,
    run: Path,
    stage: str,
    model: GeoLRM,
    has_val: bool,
    callbacks: Sequence[Callback],
    progress: bool,
    start: int = 0,
) -> L.Trainer:
    ckpt = ModelCheckpoint(
        dirpath=run / "checkpoints" / stage,
        filename="step-{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint_every,
        save_top_k=1,
        monitor="step",
        mode="max",
        save_last=True,
    )
    bars = [_StageBar(stage)] if progress else []
    world = config.devices * config.num_nodes
    val_every = config.val_every if has_val and config.val_every > 0 else None
    try:
        return L.Trainer(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            # find_unused_parameters, as the official: with one input view the cross-view
            # weight gets no gradient, and DDP would silently skip reducing its bucket
            strategy=DDPStrategy(find_unused_parameters=True) if world > 1 else "auto",
            precision=config.precision,
            max_steps=config.max_steps,
            max_epochs=-1,
            accumulate_grad_batches=config.accumulate,
            gradient_clip_val=config.stage_grad_clip(stage),
            callbacks=[ckpt, _Export(model, run, config.checkpoint_every), *bars, *callbacks],
            logger=[
                TensorBoardLogger(run / "logs", name=stage, version=""),
                _CSVLogger(run / "logs", name=stage, version="", start=start),
            ],
            plugins=[AtomicCheckpointIO()],
            log_every_n_steps=config.log_every,
            val_check_interval=(val_every * config.accumulate) if val_every else None,
            check_val_every_n_epoch=None,
            limit_val_batches=1.0 if val_every else 0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            default_root_dir=run,
        )
    except MisconfigurationException as e:
        raise InputError(f"cannot set up training: {str(e).splitlines()[0]}") from None


def train(
    data: Sequence[PathLike],
    run_dir: PathLike,
    config: TrainConfig | None = None,
    model_config: dict | PathLike | None = None,
    val: Sequence[PathLike] | None = None,
    resume: bool = False,
    on_note: Callable[[str], None] | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Train GeoLRM on folders of objects (see the module docstring for the run folder).

    Args:
        data: object folders, or folders of them (:func:`~pipelines.train.data.find_objects`).
        run_dir: the run folder (created).
        config: the settings (default :class:`TrainConfig`).
        model_config: the architecture (dict or JSON file, as ``recon --config``); None = the
            released one (or the one of ``config.init``).
        val: objects validated on (inputs from their training split, targets from their
            held-out split where they have one: see the module docstring); None = the
            training objects, the same way.
        resume: continue the run in ``run_dir`` from its last checkpoint.
        on_note: called with one line for each skipped object and each degraded setting.
        callbacks: extra Lightning callbacks (tests, tools).
        progress: show the rich progress bar.

    Raises:
        InputError: bad settings, no usable object, a run folder in use without ``resume``.
    """
    # 1. settings and the run folder
    cfg = config or TrainConfig()
    cfg.validate()
    run = Path(run_dir)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        if on_note is not None:
            on_note(msg)

    checkpoints = run / "checkpoints"
    if not resume and checkpoints.exists() and any(checkpoints.rglob("*.ckpt")):
        raise InputError(f"{run} already holds a training run; pass --resume or another -o folder")
    if resume:
        # the run's own settings; only max_steps may change (to train on)
        if not (run / SETTINGS_NAME).is_file():
            raise InputError(f"nothing to resume in {run} (no {SETTINGS_NAME}); drop --resume")
        saved = TrainConfig.load(run / SETTINGS_NAME)
        if config is not None:
            saved.max_steps = cfg.max_steps
        cfg = saved
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / SETTINGS_NAME, json.dumps(cfg.to_dict(), indent=2) + "\n")

    # 2. data: the usable objects (bad ones reported and skipped)
    def skip(path: Path, why: str) -> None:
        note(f"skipped {path}: {why}")

    objects = find_objects(data, on_skip=skip)
    model = _build_model(cfg, model_config if not resume else run / CONFIG_NAME)
    counts = ViewCounts(tuple(cfg.views_in), cfg.views_out)
    G = model.config.serializer.grid_size
    train_set = TrainDataset(objects, cfg.size, counts, seed=cfg.seed, grid_size=G)
    # without --val: the training objects, sharing the training dataset's caches
    val_set = train_set.with_targets("held_out")
    if val:
        val_objects = find_objects(val, on_skip=skip)
        val_set = TrainDataset(
            val_objects, cfg.size, counts, seed=cfg.seed, grid_size=G, targets="held_out"
        )
    if cfg.val_every > 0:
        _note_validation(val_set, cfg.val_objects, trained_on=not val, note=note)
    lpips = _lpips(cfg, note)

    # 3. the stages, each a Lightning fit (resumed from its last checkpoint)
    stages = ["proposal", "reconstruction"] if cfg.stage == "both" else [cfg.stage]
    result = TrainResult(run, run / WEIGHTS_NAME, run / CONFIG_NAME, notes=notes)
    trained_proposal = cfg.init is not None
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    for stage in stages:
        last = checkpoints / stage / "last.ckpt"
        ckpt_path = last if resume and last.is_file() else None
        start = _checkpoint_step(ckpt_path) if ckpt_path else 0
        if start >= cfg.max_steps:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
            model.load_state_dict({k[len("model.") :]: v for k, v in state.items()}, strict=True)
            result.steps[stage] = start
            trained_proposal = trained_proposal or stage == "proposal"
            continue
        anchors = _stage_anchors(cfg, stage, trained_proposal)
        module = GeoLRMTraining(model, cfg, stage, lpips=lpips, anchors=anchors)
        datamodule = _TrainData(train_set, val_set, cfg, counts, start * cfg.accumulate)
        stop = _StopOnInterrupt()
        extra = [stop, *callbacks]
        trainer = _trainer(cfg, run, stage, model, cfg.val_every > 0, extra, progress, start)
        with stop, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*ended before the epoch ended.*")
            # BatchNorm stays in eval mode on purpose (running statistics, see the module)
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            # a resumed run's own checkpoint folder; Lightning's internal deprecation
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* not empty.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        trainer.save_checkpoint(last)  # the step it stopped at: a complete checkpoint
        if stop.requested:
            raise KeyboardInterrupt
        result.steps[stage] = trainer.global_step
        result.metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        trained_proposal = trained_proposal or stage == "proposal"
    if resume and not (run / WEIGHTS_NAME).is_file():
        export_weights(model, run)
    return result
