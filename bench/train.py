"""Training-step benchmark: the released GeoLRM architecture (random weights) trained on the
repository's example Spot through the real engine (``pipelines.train.engine.train``: Lightning,
the data loader, the losses, the rasteriser, AdamW).

Prints one JSON object: per stage (the proposal network, then the reconstruction stage on
ground-truth anchors, ``max_anchors`` 4096 as the official), the seconds of each optimiser step,
the median of the steps after the first (the first compiles kernels and warms caches),
samples/s, peak memory (process RSS; on CUDA also the allocator's peak), and the official
training budget for comparison. Each stage runs in its own process, so peak memory is per stage.

    .venv/bin/python bench/train.py                          # CPU, fp32, 448 px, 6 in / 4 out
    .venv/bin/python bench/train.py --steps 2 --stage reconstruction
    .venv/bin/python bench/train.py --accelerator gpu --precision bf16-mixed --steps 6
    .venv/bin/python bench/train.py --config examples/tiny/geolrm_tiny_config.json --size 56

LPIPS is on when its VGG16 weights are downloaded (``geolrm weights download vgg16`` and
``lpips-vgg``), off otherwise; the JSON says which.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

STAGES = ("proposal", "reconstruction")
#: the official code's README: the proposal network "around 1 day on 8 A100 GPUs", the
#: reconstruction stage "around 2 days on 32 A100 GPUs"; per step 1 object x accumulate 8 per
#: GPU (configs/geolrm-train.yaml), 2 objects per GPU for the proposal (configs/srl-bf16.yaml)
PAPER_BUDGET = {
    "proposal": {"gpus": "8 x A100", "days": 1, "objects_per_gpu_step": 2},
    "reconstruction": {"gpus": "32 x A100", "days": 2, "objects_per_gpu_step": 8},
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def run_stage(args: argparse.Namespace) -> dict:
    """One stage in this process: ``args.steps`` optimiser steps, timed per step."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from pipelines.train.config import TrainConfig
    from pipelines.train.engine import train

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def _sync(self, pl_module) -> None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._sync(pl_module)
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._sync(pl_module)
            self.times.append(time.perf_counter() - self._t)

    work = Path(tempfile.mkdtemp(prefix="geolrm-bench-train-"))
    try:
        from train_support import copy_spot  # examples/spot + its depth maps (tests/fixtures)

        data = copy_spot(work / "spot")
        cfg = TrainConfig(
            stage=args.stage,
            max_steps=args.steps,
            batch_size=args.batch_size,
            size=args.size,
            views_in=(args.views_in, args.views_in),
            views_out=args.views_out,
            precision=args.precision,
            accelerator=args.accelerator,
            anchors="occupancy",
            max_anchors=args.anchors,
            grad_checkpointing=not args.no_grad_checkpointing,
            checkpoint_every=10**9,
            val_every=0,
            log_every=1,
        )
        timer = StepTimer()
        notes: list[str] = []

        def note(msg: str) -> None:
            notes.append(msg)
            print(f"note: {msg}", file=sys.stderr)

        t0 = time.perf_counter()
        result = train(
            [data],
            work / "run",
            cfg,
            model_config=args.config,
            on_note=note,
            callbacks=[timer],
            progress=False,
        )
        total = time.perf_counter() - t0
        steady = timer.times[1:] or timer.times
        step = statistics.median(steady)
        out = {
            "stage": args.stage,
            "step_s": [round(t, 3) for t in timer.times],
            "median_step_s": round(step, 3),
            "samples_per_s": round(args.batch_size / step, 4),
            "wall_s": round(total, 1),
            "peak_rss_gb": round(peak_rss_gb(), 2),
            "anchors": result.metrics.get("train/anchors"),
            "loss": result.metrics.get("train/loss"),
            "lpips": not any(n.startswith("LPIPS term off") for n in notes),
        }
        if torch.cuda.is_available() and args.accelerator != "cpu":
            out["cuda_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            out["cuda_peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
            out["gpu"] = torch.cuda.get_device_name()
        budget = PAPER_BUDGET[args.stage]
        out["paper_budget"] = budget
        # the time one optimiser step of the official recipe (objects_per_gpu_step objects) takes
        # here on one device
        out["official_step_here_s"] = round(
            budget["objects_per_gpu_step"] * step / args.batch_size, 2
        )
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", choices=(*STAGES, "both"), default="both")
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per stage (>= 2)")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--views-in", type=int, default=6)
    p.add_argument("--views-out", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--anchors", type=int, default=4096)
    p.add_argument("--precision", default="32", choices=("32", "bf16-mixed", "16-mixed"))
    p.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--config", default=None, help="architecture JSON (default: the released)")
    p.add_argument("--no-grad-checkpointing", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        print(json.dumps(run_stage(args)))
        return

    stages = STAGES if args.stage == "both" else (args.stage,)
    results = {}
    for stage in stages:
        cmd = [sys.executable, __file__, "--child", "--stage", stage]
        for name in ("steps", "size", "views_in", "views_out", "batch_size", "anchors"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        cmd += ["--precision", args.precision, "--accelerator", args.accelerator]
        if args.config:
            cmd += ["--config", args.config]
        if args.no_grad_checkpointing:
            cmd.append("--no-grad-checkpointing")
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            sys.exit(f"{stage} stage failed:\n{proc.stderr[-3000:]}")
        results[stage] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "config": args.config or "released",
                "size": args.size,
                "views_in": args.views_in,
                "views_out": args.views_out,
                "precision": args.precision,
                "accelerator": args.accelerator,
                "grad_checkpointing": not args.no_grad_checkpointing,
                "torch_threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
                "load_1min": round(os.getloadavg()[0], 2),
                "stages": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
