"""Device choice and routing (CUDA, Apple MPS, CPU), checked with CPU stand-ins.

No Apple hardware is available: these tests check which device each stage is given, the
dtype choice, the CPU fallback of the network stages and the one-line messages, by patching
``torch.cuda.is_available`` / ``torch.backends.mps.is_available`` (and, through conftest's
``mps_standin``, making a move to ``mps`` fail like an operation MPS lacks). MPS itself is
never run. The end-to-end stand-in runs live with their commands' tests (test_recon.py,
test_gen.py), where the models are already warm.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error

from pipelines import device as dv
from pipelines.errors import InputError, Note

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "geolrm_tiny"


def _machine(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


# ------------------------------------------------------------------ choosing the device


@pytest.mark.parametrize(
    "cuda, mps, want",
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
@pytest.mark.parametrize("name", [None, "", "auto"])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want, name) -> None:
    _machine(monkeypatch, cuda, mps)
    assert dv.resolve_device(name) == want


def test_explicit_devices(monkeypatch) -> None:
    _machine(monkeypatch, cuda=False, mps=True)
    assert dv.resolve_device("mps") == "mps"
    assert dv.resolve_device("mps:0") == "mps"
    assert dv.resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match="CUDA GPU but none"):
        dv.resolve_device("cuda:1")
    with pytest.raises(InputError, match=r"use auto, cpu, cuda\[:N\] or mps"):
        dv.resolve_device("metal")
    _machine(monkeypatch, cuda=False, mps=False)
    with pytest.raises(InputError, match="MPS.*not available.*use --device cpu"):
        dv.resolve_device("mps")


def test_no_mps_backend_in_torch(monkeypatch) -> None:
    """A torch without ``torch.backends.mps`` counts as no MPS (auto falls to the CPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delattr(torch.backends, "mps")
    assert not dv.mps_available()
    assert dv.resolve_device("auto") == "cpu"


@pytest.mark.parametrize("command", ["render", "mesh", "recon"])
def test_mps_without_mps_is_one_line_error(cli, monkeypatch, tmp_path, command) -> None:
    """The real command line: exit code 2, one ``error:`` line naming the fix."""
    _machine(monkeypatch, cuda=False, mps=False)
    src = ROOT / "examples" / "spot" / "spot.ply"
    if command == "recon":
        src = FIXTURE / "tiny_views"
    dest = tmp_path / ("out.glb" if command == "mesh" else "out")
    code, out, err = cli(command, src, "--device", "mps", "-o", dest)
    assert code == 2, err
    assert_one_line_error(err, "--device mps", "MPS", "use --device cpu")
    assert out == "" and not dest.exists()


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize("stage", ["raster", "tsdf", "optimize"])
def test_cpu_paths_on_mps_stay_on_cuda(stage) -> None:
    assert dv.stage_device("mps", stage) == "cpu"
    assert dv.stage_device(torch.device("mps"), stage) == "cpu"
    assert dv.stage_device("cuda:1", stage) == "cuda:1"
    assert dv.stage_device("cuda", stage) == "cuda"
    assert dv.stage_device("cpu", stage) == "cpu"


@pytest.mark.parametrize("stage", ["diffusion", "geolrm"])
def test_networks_stay_on_the_device(stage) -> None:
    for device in ("mps", "cuda", "cuda:1", "cpu"):
        assert dv.stage_device(device, stage) == device


def test_unknown_stage() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        dv.stage_device("mps", "texture")


def test_library_entry_points_route_mps_to_the_cpu(monkeypatch) -> None:
    """Rendering on ``mps`` goes through the CPU rasteriser and returns CPU images, the same
    as asking for the CPU (this torch has no MPS: an MPS tensor would fail at once)."""
    from pipelines.render import render_frames, turntable_cameras
    from pipelines.splats.gaussians import Gaussians

    gen = torch.Generator().manual_seed(0)
    g = Gaussians(
        means=torch.rand(50, 3, generator=gen) - 0.5,
        scales=torch.full((50, 3), 0.05),
        quats=torch.nn.functional.normalize(torch.randn(50, 4, generator=gen), dim=-1),
        opacities=torch.full((50,), 0.7),
        colors=torch.rand(50, 3, generator=gen),
    )
    cams = turntable_cameras(g, 2, 20.0, 40.0, 24)
    on_mps = [f.rgb for f in render_frames(g, cams, "white", "mps")]
    on_cpu = [f.rgb for f in render_frames(g, cams, "white", "cpu")]
    assert all((a == b).all() for a, b in zip(on_mps, on_cpu, strict=True))


# ------------------------------------------------------------------ precision


def test_diffusion_dtype() -> None:
    assert dv.diffusion_dtype("mps") == torch.float16
    assert dv.diffusion_dtype("cuda:0") == torch.float16
    assert dv.diffusion_dtype("cpu") == torch.float32


def test_generator_precision_on_mps(monkeypatch, tmp_path) -> None:
    """``gen --precision auto`` on MPS: fp16 diffusion, no offload (CUDA-only), GeoLRM fp32;
    bf16 / fp16 for GeoLRM stay CUDA-only with a one-line reason."""
    from pipelines.generate import Generator, GenOptions

    _machine(monkeypatch, cuda=False, mps=True)
    folder = tmp_path / "z123"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")  # nothing is loaded before the first run
    opts = dict(
        device="mps",
        mv_weights=folder,
        unet="original",
        checkpoint=FIXTURE / "geolrm_tiny_weights.safetensors",
        config={},
        low_vram=True,
    )
    gen = Generator(GenOptions(**opts))
    assert gen.mv_dtype == torch.float16 and gen.recon_precision == "fp32"
    assert gen.mv.device == "mps" and gen.mv.offload is False
    assert Generator(GenOptions(**{**opts, "device": "cpu"})).mv_dtype == torch.float32
    for precision in ("fp16", "bf16"):
        with pytest.raises(InputError, match=f"--precision {precision} needs a CUDA device"):
            Generator(GenOptions(**{**opts, "precision": precision}))


# ------------------------------------------------------------------ fallback to the CPU


def _blur(dev: str) -> torch.Tensor:
    """A small real computation: a 3x3 box blur of a ramp, on ``dev``."""
    x = torch.linspace(-1.0, 1.0, 64, device=dev).reshape(1, 1, 8, 8)
    w = torch.full((1, 1, 3, 3), 1.0 / 9.0, device=dev)
    return torch.nn.functional.conv2d(x, w, padding=1)


@pytest.mark.skipif(dv.mps_available(), reason="a real MPS device: the stand-in needs none")
def test_run_stage_reruns_on_the_cpu_with_one_note() -> None:
    """This torch has no MPS kernels, so ``_blur("mps")`` raises torch's own
    NotImplementedError (as a kernel MPS lacks does); the stage reruns on the CPU."""
    with pytest.raises(NotImplementedError):
        _blur("mps")
    devices = []

    def stage(dev: str) -> torch.Tensor:
        devices.append(dev)
        return _blur(dev)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = dv.run_stage("blur", "mps", stage)
    assert devices == ["mps", "cpu"]
    assert out.device.type == "cpu" and torch.equal(out, _blur("cpu"))
    notes = [w for w in caught if issubclass(w.category, Note)]
    assert len(notes) == 1, [str(w.message) for w in caught]
    text = str(notes[0].message)
    assert "\n" not in text and "blur: aten::" in text and "rerunning it on the CPU" in text


def test_run_stage_only_falls_back_from_mps() -> None:
    """On CUDA (or the CPU) a NotImplementedError is a real bug: it propagates."""

    def stage(dev: str) -> None:
        raise NotImplementedError("The operator 'aten::x' is not currently implemented")

    for device in ("cpu", "cuda", "cuda:1"):
        with pytest.raises(NotImplementedError):
            dv.run_stage("stage", device, stage)
    assert dv.run_stage("stage", "mps", lambda dev: dev) == "mps"  # no error: no rerun


def test_missing_op_name() -> None:
    assert dv.missing_op(NotImplementedError("The operator 'aten::foo.out' is not")) == (
        "aten::foo.out"
    )
    assert dv.missing_op(NotImplementedError("something else")) == "an operation"


# ------------------------------------------------------------------ PYTORCH_ENABLE_MPS_FALLBACK


@pytest.mark.parametrize(
    "argv, sets",
    [
        (["gen", "photo.png"], True),
        (["gen", "photo.png", "--device", "mps"], True),
        (["recon", "v", "--device=auto"], True),
        (["recon", "v", "--device", "cpu"], False),
        (["render", "m.ply", "--device=cuda:1"], False),
    ],
)
def test_enable_mps_fallback(argv, sets) -> None:
    env: dict[str, str] = {}
    assert dv.enable_mps_fallback(argv, env) is sets
    assert env == ({dv.MPS_FALLBACK_ENV: "1"} if sets else {})
    assert dv.mps_fallback_on(env) is sets


def test_enable_mps_fallback_keeps_the_users_choice() -> None:
    env = {dv.MPS_FALLBACK_ENV: "0"}
    assert dv.enable_mps_fallback(["gen", "p.png", "--device", "mps"], env) is False
    assert env == {dv.MPS_FALLBACK_ENV: "0"} and not dv.mps_fallback_on(env)


def test_the_cli_sets_it_before_torch_is_imported() -> None:
    """torch reads PYTORCH_ENABLE_MPS_FALLBACK once, at import: the console script's
    ``main`` sets it before anything imports torch."""
    code = (
        "import os, sys\n"
        "os.environ.pop('PYTORCH_ENABLE_MPS_FALLBACK', None)\n"
        "sys.argv = ['geolrm', '--version']\n"
        "import geolrm_cli.app as app\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        "    app.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 False"


def test_mps_note_says_what_runs_where(monkeypatch) -> None:
    monkeypatch.setenv(dv.MPS_FALLBACK_ENV, "1")
    text = dv.mps_note()
    for part in ("GeoLRM on MPS", "optimiser on the CPU", "FALLBACK=1"):
        assert part in text, part
    monkeypatch.setenv(dv.MPS_FALLBACK_ENV, "0")
    assert "rerun on the CPU" in dv.mps_note()


def test_stage_memory_on_mps_without_mps_reads_rss() -> None:
    """``gen``'s stage table: MPS memory where the driver can be asked, else resident memory."""
    from pipelines.generate import _measure

    stats: list = []
    with _measure(stats, "stage", "mps"):
        torch.ones(10).sum()
    assert stats[0].memory == ("mps" if dv.mps_available() else "rss")
    assert stats[0].peak_bytes is None or stats[0].peak_bytes > 0
