"""``pipelines.recon``: the recon workflow as a library call, and the view limits.

GeoLRM takes 1 to 32 views (its one-line refusal is kept); the optimiser runs no network and
takes any number of views.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from geolrm_cli.app import app
from geolrm_cli.console import run_cli
from pipelines.cameras import Cameras
from pipelines.cameras.dataparsers import load_transforms
from pipelines.errors import InputError
from pipelines.options import ReconOptions
from pipelines.recon import Recon, recon
from pipelines.splats.ply import load_ply

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
WEIGHTS = ROOT / "tests" / "fixtures" / "geolrm_tiny" / "geolrm_tiny_weights.safetensors"
CONFIG = ROOT / "examples" / "tiny" / "geolrm_tiny_config.json"
TINY = ["--checkpoint", str(WEIGHTS), "--config", str(CONFIG), "--size", "112"]
SIZE = 32


@pytest.fixture(scope="module")
def views33(tmp_path_factory) -> Path:
    """33 RGBA views of Spot at 32 px (its 21 training and 12 test views) with their
    transforms.json: one more than GeoLRM takes."""
    folder = tmp_path_factory.mktemp("views33")
    parts = [load_transforms(SPOT / f"transforms_{s}.json") for s in ("train", "test")]
    paths = [p for c in parts for p in c.image_paths]
    cams = Cameras(
        torch.cat([c.c2w for c in parts]), torch.cat([c.K for c in parts]), 512, 512, paths
    ).resized(SIZE, SIZE)
    names = []
    for i, p in enumerate(paths):
        names.append(f"images/{i:03d}.png")
        (folder / "images").mkdir(exist_ok=True)
        with Image.open(p) as im:
            im.convert("RGBA").resize((SIZE, SIZE), Image.LANCZOS).save(folder / names[-1])
    data = cams.to_transforms_json(file_paths=names)
    (folder / "transforms.json").write_text(json.dumps(data, indent=1) + "\n")
    assert len(load_transforms(folder / "transforms.json")) == 33
    return folder


def _recon_cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["geolrm", "recon", *map(str, args)])
    capsys.readouterr()
    code = run_cli(app)
    return code, capsys.readouterr().err


def test_optimize_takes_more_than_32_views(views33, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    args = ["--method", "optimize", "--iterations", "2", "--resolution", "16", "--no-video"]
    code, err = _recon_cli(capsys, monkeypatch, views33, *args, "-o", out)
    assert code == 0, err
    assert "from 33 views" in err and "optimised 2 steps" in err
    assert len(load_ply(out / "model.ply").gaussians) > 0
    assert len(load_transforms(out / "cameras.json")) == 33


def test_geolrm_still_refuses_33_views(views33, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    code, err = _recon_cli(capsys, monkeypatch, views33, *TINY, "-o", out)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == "error: GeoLRM takes 1 to 32 views, got 33; keep at most 32 of them"
    assert not out.exists()


def test_recon_as_a_library_call(tmp_path) -> None:
    """A Python user runs the same workflow as the CLI: checks first, then the outputs."""
    out = tmp_path / "out"
    opts = ReconOptions(method="optimize", iterations=3, resolution=32, video=False)
    stages = []
    run = recon(SPOT / "transforms_train.json", out, opts, on_stage=lambda *a: stages.append(a))
    assert [p.name for p in run.files] == ["model.ply", "cameras.json", "model_frame.json"]
    assert run.views == 21 and run.out_dir == out
    assert run.scene.geolrm is None and len(run.scene.history) == 3
    assert stages[-1] == ("Writing outputs",)
    assert len(load_ply(out / "model.ply").gaussians) == len(run.scene.gaussians)
    # the checks run when the job is built, before any work or any file
    with pytest.raises(InputError, match="--size only apply to --method geolrm"):
        Recon(
            SPOT / "transforms_train.json",
            tmp_path / "o2",
            ReconOptions(method="optimize", size=112),
        )
    with pytest.raises(InputError, match="unknown --method 'nerf'"):
        Recon(SPOT / "transforms_train.json", tmp_path / "o2", ReconOptions(method="nerf"))
    assert not (tmp_path / "o2").exists()
