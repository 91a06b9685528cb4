"""GeoLRM's two training stages as one LightningModule (official ``src/serializer_wrapper.py`` and
``src/geolrm_wrapper.py``).

A step of each stage, on a batch of :mod:`pipelines.train.data` samples:

* **proposal**: the proposal network's occupancy logits from the input views, against the
  sample's occupancy grid (:func:`~pipelines.train.losses.proposal_loss`: BCE + scene-class
  affinity); IoU, precision and recall logged.
* **reconstruction**: anchors (the frozen proposal network's occupied cells, or the ground-truth
  grid's: :data:`~pipelines.train.config.ANCHOR_SOURCES`), the reconstruction transformer on
  them, 3D Gaussians, rendered by :func:`pipelines.raster.rasterize` (gsplat on CUDA, the numba
  rasteriser on the CPU) at the target cameras on the sample's background colour, against the
  targets composited on the same colour (:func:`~pipelines.train.losses.reconstruction_loss`).

Losses are means over the batch's objects of each object's loss: the official trains one object
per GPU, so this is its DDP mean, and DDP over ``n`` processes of batch ``B`` computes exactly the
gradient of one process with batch ``n·B``.

Deliberate differences from the official modules (each documented where it is coded):
BatchNorm layers of the image encoders use their running statistics (frozen), so that results
do not depend on how views are chunked or split over processes; the rendered depth is the
expected depth (normalised by alpha); the targets are composited once (the official composites
images that already carry a background).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from pipelines.geolrm.model import (
    GeoLRM,
    ImageFeatures,
    gaussians_from_rows,
    select_anchors,
)
from pipelines.lpips import LPIPS
from pipelines.optimize.losses import psnr_db
from pipelines.raster import rasterize
from pipelines.train.config import TrainConfig
from pipelines.train.losses import (
    occupancy_metrics,
    proposal_loss,
    reconstruction_loss,
)

__all__ = [
    "GeoLRMTraining",
    "anchors_for_batch",
    "cosine_schedule",
    "render_views",
    "sample_generator",
]


def cosine_schedule(step: int, warmup: int, total: int, floor: float) -> float:
    """The official learning-rate factor: a cosine rise from ``floor`` to 1 over ``warmup``
    steps, then a cosine decay back to ``floor`` at ``total``."""
    if step < warmup:
        return floor + (1 - math.cos(math.pi * step / warmup)) * (1 - floor) * 0.5
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 + math.cos(math.pi * t)) * (1 - floor) * 0.5


def anchors_for_batch(
    model: GeoLRM,
    batch: dict[str, Tensor],
    source: str,
    max_anchors: int,
    seed: int,
) -> tuple[list[Tensor], int]:
    """The reconstruction stage's anchors of each object.

    Args:
        source: ``proposal`` (cells the proposal network finds occupied, no gradient) or
            ``occupancy`` (the sample's ground-truth cells); an object the proposal network
            finds empty falls back to its ground truth.
        max_anchors: a random subset above this many (as :func:`select_anchors`), drawn by a
            generator of each sample's own (``seed``, ``sample_id``): the same anchors
            whichever batch or process the sample is in, and after a resume.
    Returns:
        ``[n_b, 3]`` model-frame anchors per object (``n_b`` may be 0), and how many objects
        fell back to the ground truth.
    """
    occ = batch.get("occupancy")
    G = model.config.serializer.grid_size
    if occ is not None and occ.shape[-1] != G:
        raise ValueError(f"occupancy grid {occ.shape[-1]} != the model's grid {G}")
    logits = None
    if source == "proposal":
        with torch.no_grad():
            images, c2ws, Ks = batch["input_images"], batch["input_c2ws"], batch["input_Ks"]
            feats = model.serializer.encoder(images, c2ws, Ks)
            logits = model.serializer.occupancy_logits(feats, c2ws, Ks).float()
    fallback = 0
    anchors = []
    for b in range(batch["input_images"].shape[0]):
        gen = sample_generator(seed, int(batch["sample_id"][b]))
        a = None if logits is None else select_anchors(logits[b : b + 1], max_anchors, gen)[0]
        if (a is None or len(a) == 0) and occ is not None:
            fallback += a is not None
            # the ground truth as logits: occupied cells > 0, the same selection rule
            a = select_anchors(occ[b : b + 1].float() - 0.5, max_anchors, gen)[0]
        anchors.append(a if a is not None else batch["input_images"].new_zeros(0, 3))
    return anchors, fallback


def sample_generator(seed: int, sample_id: int) -> torch.Generator:
    """The generator of one sample's random draws in the step (its anchor subset)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + sample_id)


def render_views(
    rows: Tensor, keep: Tensor, c2ws: Tensor, Ks: Tensor, size: int, background: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Render one object's Gaussians at its target cameras.

    Args:
        rows: ``[N, 14]`` Gaussians (``get_gaussians`` layout); keep: ``[N]`` bool (padding
            rows get opacity 0).
        c2ws: ``[V, 4, 4]``; Ks: ``[V, 3, 3]`` normalised intrinsics; background: ``[3]``.
    Returns:
        rgb ``[V, 3, S, S]``, alpha ``[V, 1, S, S]``, depth ``[V, 1, S, S]`` (expected camera
        z, 0 off the object).
    """
    g = gaussians_from_rows(rows)
    g.opacities = g.opacities * keep.to(g.opacities)
    scale = Ks.new_tensor([size, size, 1.0]).view(1, 3, 1)
    out = rasterize(g, c2ws.float(), (Ks * scale).float(), size, size, background.float())
    return (
        out.rgb.permute(0, 3, 1, 2),
        out.alpha.permute(0, 3, 1, 2),
        out.depth.permute(0, 3, 1, 2),
    )


def _freeze_batchnorm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class GeoLRMTraining(L.LightningModule):
    """One stage of GeoLRM training.

    Args:
        model: the :class:`~pipelines.geolrm.GeoLRM` trained (its parameters are shared with
            the caller: after ``fit`` it holds the trained weights).
        config: the run's settings.
        stage: ``proposal`` or ``reconstruction``.
        lpips: the LPIPS network (kept out of the checkpoints), or None to skip the term.
        anchors: ``proposal`` or ``occupancy`` (already resolved from ``auto``).
    """

    def __init__(
        self,
        model: GeoLRM,
        config: TrainConfig,
        stage: str,
        lpips: LPIPS | None = None,
        anchors: str = "occupancy",
    ) -> None:
        super().__init__()
        if stage not in ("proposal", "reconstruction"):
            raise ValueError(f"stage must be proposal or reconstruction, not {stage!r}")
        self.model = model
        self.config = config
        self.stage = stage
        self.anchor_source = anchors
        object.__setattr__(self, "_lpips", lpips)  # not a submodule: stays out of checkpoints
        model.set_options(attention=config.attention_mode())
        model.requires_grad_(False)
        net = model.serializer if stage == "proposal" else model.lrm_generator
        net.requires_grad_(True)
        if config.freeze_encoder:
            net.encoder.model.requires_grad_(False)
        # DINOv2's mask token only serves masked-image pretraining: never used here (and DDP
        # refuses parameters that get no gradient)
        mask_token = getattr(net.encoder.model.embeddings, "mask_token", None)
        if mask_token is not None:
            mask_token.requires_grad_(False)
        net.transformer.gradient_checkpointing = config.grad_checkpointing
        self._last_step_end: float | None = None

    # -- modes ---------------------------------------------------------------------------

    def train(self, mode: bool = True) -> GeoLRMTraining:
        super().train(mode)
        _freeze_batchnorm(self.model)  # running statistics: independent of chunking and ranks
        if self._lpips is not None:
            self._lpips.eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores each submodule's own mode after validation: freeze again
        _freeze_batchnorm(self.model)

    def on_fit_start(self) -> None:
        if self._lpips is not None:
            self._lpips.to(self.device)

    # -- optimisation --------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=cfg.stage_lr(self.stage), betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        warmup, total, floor = cfg.warmup(), cfg.max_steps, cfg.min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: cosine_schedule(step, warmup, total, floor)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- the two stages ------------------------------------------------------------------

    def proposal_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Occupancy logits vs the ground-truth grid -> (loss, logged values)."""
        images, c2ws, Ks = batch["input_images"], batch["input_c2ws"], batch["input_Ks"]
        logits = self.model.serializer(images, c2ws, Ks).float()
        occ = batch["occupancy"].float()
        losses = [proposal_loss(logits[b : b + 1], occ[b : b + 1])[0] for b in range(len(occ))]
        loss = torch.stack(losses).mean()
        metrics = occupancy_metrics(logits.detach(), occ)
        logs = {
            "loss": float(loss.detach()),
            **{k: metrics[k] for k in ("iou", "precision", "recall")},
        }
        return loss, logs

    def reconstruction_step(
        self, batch: dict[str, Tensor], background: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        """Anchors -> Gaussians -> renders at the target views vs the targets.

        Args:
            background: ``[3]`` colour for every object (validation: white); None = each
                sample's own (training: random per sample, as the official).
        Returns:
            (loss, logged values, renders ``{"rgb", "target"}`` ``[B, V, 3, S, S]``).
        """
        cfg = self.config
        anchors, fallback = anchors_for_batch(
            self.model, batch, self.anchor_source, cfg.max_anchors, cfg.seed
        )
        images, c2ws, Ks = batch["input_images"], batch["input_c2ws"], batch["input_Ks"]
        gen_net = self.model.lrm_generator
        feats: ImageFeatures = gen_net.encoder(images, c2ws, Ks)
        size = int(batch["target_rgb"].shape[-1])
        totals, terms, renders, targets, psnrs = [], {}, [], [], []
        for b, a in enumerate(anchors):
            # each object on its own: padding rows would take part in the attention (and a
            # sample's result would depend on the batch it is in)
            keep = torch.ones(len(a), dtype=torch.bool, device=images.device)
            if len(a) == 0:  # one invisible anchor: renders the background
                a, keep = a.new_zeros(1, 3), keep.new_zeros(1)
            latents = gen_net.transformer(
                a[None].to(images.device),
                ImageFeatures(feats.feats[b : b + 1], feats.spatial_shapes),
                c2ws[b : b + 1],
                Ks[b : b + 1],
                xyz_scale=self.model.config.lrm_generator.xyz_scale,
            )
            rows = gen_net.renderer.get_gaussians(a[None].to(images.device), latents)[0]
            keep_rows = keep.repeat_interleave(gen_net.cfg.gs_per_token)
            bg = batch["background"][b] if background is None else background.to(images)
            rgb, alpha, depth = render_views(
                rows, keep_rows, batch["target_c2ws"][b], batch["target_Ks"][b], size, bg
            )
            t_alpha = batch["target_alpha"][b]
            t_rgb = batch["target_rgb"][b] * t_alpha + bg.view(1, 3, 1, 1) * (1 - t_alpha)
            t_depth = batch["target_depth"][b]
            weights = cfg.loss
            if not bool(batch["has_depth"][b]) or not bool((t_alpha > 0).any()):
                weights = dataclasses.replace(weights, depth=0.0)
            out = reconstruction_loss(
                rgb, alpha, depth, t_rgb, t_alpha, t_depth, weights, self._lpips
            )
            totals.append(out.total)
            for k, v in out.terms.items():
                terms.setdefault(k, []).append(float(v.detach()))
            psnrs.append(float(psnr_db(rgb.detach().clamp(0, 1), t_rgb)))
            renders.append(rgb.detach())
            targets.append(t_rgb)
        loss = torch.stack(totals).mean()
        logs = {"loss": float(loss.detach()), "psnr": sum(psnrs) / len(psnrs)}
        logs.update({k: sum(v) / len(v) for k, v in terms.items()})
        logs["anchors"] = sum(len(a) for a in anchors) / len(anchors)
        if fallback:
            logs["anchor_fallback"] = float(fallback)
        return loss, logs, {"rgb": torch.stack(renders), "target": torch.stack(targets)}

    # -- Lightning hooks -----------------------------------------------------------------

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.stage == "proposal":
            loss, logs = self.proposal_step(batch)
        else:
            loss, logs, _ = self.reconstruction_step(batch)
        now = time.perf_counter()
        if self._last_step_end is not None:
            world = self.trainer.world_size if self._trainer is not None else 1
            logs["samples_per_s"] = len(batch["sample_id"]) * world / (now - self._last_step_end)
        self._last_step_end = now
        bar = {"loss", "psnr", "iou", "samples_per_s"}
        for k, v in logs.items():
            self.log(
                f"train/{k}", v, prog_bar=k in bar, on_step=True, batch_size=len(batch["sample_id"])
            )
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        n = len(batch["sample_id"])
        if self.stage == "proposal":
            _, logs = self.proposal_step(batch)
        else:
            white = torch.ones(3, device=batch["input_images"].device)
            _, logs, _ = self.reconstruction_step(batch, background=white)
        for k in ("loss", "psnr", "iou"):
            if k in logs:
                self.log(f"val/{k}", logs[k], prog_bar=k != "loss", batch_size=n, sync_dist=True)
