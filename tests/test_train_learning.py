"""Real learning (slow): GeoLRM trained from scratch on one object learns it.

A small config (``examples/tiny``'s architecture, 56 px) trains both stages on Spot (21
training views with depth, ``points.npy``) from random weights: the proposal network, then the
reconstruction stage on the trained proposal network's anchors. ``geolrm recon`` with the run
folder's weights then reconstructs Spot from its training views, and ``geolrm eval`` renders
the result at the 12 held-out test cameras. The test PSNR must be clearly above that of an empty
(all-white) render, which a model that learnt nothing but transparency reaches.

It prints the curve (the logged training loss and PSNR, the validation PSNR) and the final
numbers as JSON; run with ``pytest -m slow -s tests/test_train_learning.py``. About 7 minutes
on a quiet 2-core CPU (17 on a busy one).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_support import copy_spot

from pipelines.cameras.dataparsers import load_transforms
from pipelines.evaluate import load_gt_images, psnr
from pipelines.train.config import TrainConfig
from pipelines.train.engine import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny" / "geolrm_tiny_config.json"
SIZE = 56
STEPS = 1200
#: the test PSNR must beat the empty render's by this much (dB)
MARGIN_DB = 3.0

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "geolrm_cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    return r


def _curve(run: Path, stage: str, every: int) -> list[dict]:
    """Rows of ``RUN/logs/<stage>/metrics.csv``, averaged over windows of ``every`` steps."""
    with open(run / "logs" / stage / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in rows[0] if k.startswith(("train/", "val/")) and "samples" not in k]
    windows: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        w = windows.setdefault(int(row["step"]) // every, {})
        for k in keys:
            if row.get(k):
                w.setdefault(k, []).append(float(row[k]))
    return [
        {"steps": f"{w * every}-{(w + 1) * every - 1}"}
        | {k: round(sum(v) / len(v), 4) for k, v in vals.items()}
        for w, vals in sorted(windows.items())
    ]


def test_training_from_scratch_learns_spot(tmp_path: Path) -> None:
    spot = copy_spot(tmp_path / "spot")
    run, out = tmp_path / "run", tmp_path / "recon"
    cfg = TrainConfig(
        stage="both",
        max_steps=STEPS,
        size=SIZE,
        lr=1e-3,  # a small network from scratch: 10x the official fine-grained rate
        views_in=(1, 7),
        views_out=4,
        grad_checkpointing=False,  # memory is no concern at 56 px; a third less compute
        max_anchors=json.loads(TINY.read_text())["serializer"]["max_seq_len"],  # recon's
        checkpoint_every=STEPS,
        val_every=200,
        val_objects=1,
        log_every=10,
        lpips=False,  # no LPIPS weights on this machine (and slow on a CPU)
        seed=0,
    )
    t0 = time.perf_counter()
    result = train([spot], run, cfg, model_config=TINY, progress=False)
    train_s = time.perf_counter() - t0
    assert result.steps == {"proposal": STEPS, "reconstruction": STEPS}

    # geolrm recon on the training views, geolrm eval at the test cameras
    _cli(
        "recon",
        str(spot / "transforms_train.json"),
        "--checkpoint",
        str(run / "geolrm.safetensors"),
        "--config",
        str(run / "config.json"),
        "--size",
        str(SIZE),
        "-o",
        str(out),
        "--no-video",
    )
    _cli("eval", str(out), "--gt", str(spot), "--resolution", str(SIZE), "--points", "20000")
    metrics = json.loads((out / "eval.json").read_text())

    # the empty render: all white, against the same test images
    images, alpha, _ = load_gt_images(load_transforms(spot / "transforms_test.json"), SIZE)
    white = torch.ones_like(images)
    empty = float(psnr(white, images).mean())
    empty_masked = float(psnr(white, images, alpha > 0.5).mean())

    report = {
        "train_s": round(train_s, 1),
        "steps": result.steps,
        "test_psnr_white": round(metrics["psnr_white"], 2),
        "test_psnr_masked": round(metrics["psnr_masked"], 2),
        "test_ssim": round(metrics["ssim"], 4),
        "empty_psnr_white": round(empty, 2),
        "empty_psnr_masked": round(empty_masked, 2),
        "proposal_curve": _curve(run, "proposal", 200),
        "reconstruction_curve": _curve(run, "reconstruction", 200),
    }
    print(json.dumps(report, indent=1))
    proposal_end = report["proposal_curve"][-1]
    assert proposal_end["train/iou"] > 0.5, report
    assert metrics["psnr_white"] > empty + MARGIN_DB, report
    assert metrics["psnr_masked"] > empty_masked + MARGIN_DB, report
