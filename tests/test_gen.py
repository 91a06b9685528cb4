"""``geolrm gen`` end to end on CPU: tiny Zero123++ / SV3D models and the tiny GeoLRM weights.

Every case runs the real command line in-process (``run_cli``); the tiny multi-view models
come from tests/tiny_multiview.py and are passed with ``--mv-weights``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_multiview as tm
import torch
import trimesh
from conftest import assert_one_line_error
from PIL import Image

from pipelines.threads import torch_threads

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
PHOTO = PHOTOS / "Input_2.png"
GEOLRM = [
    "--checkpoint",
    str(ROOT / "tests" / "fixtures" / "geolrm_tiny" / "geolrm_tiny_weights.safetensors"),
    "--config",
    str(ROOT / "examples" / "tiny" / "geolrm_tiny_config.json"),
    "--size",
    "112",
]
FAST = ["--steps", "2", "--tile", str(tm.TILE), "--no-video"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def cli(cli):
    """conftest's ``cli`` with torch back on one thread before each command: numba's OpenMP
    layer (GeoLRM's CPU kernels) resets torch's thread count, and tiny models only lose time
    (and bit-exactness between runs) with more threads on a shared CPU."""

    def run(*args):
        torch.set_num_threads(1)
        return cli(*args)

    return run


@pytest.fixture(scope="module")
def z123_dir(tmp_path_factory) -> Path:
    return tm.build_zero123pp(tmp_path_factory.mktemp("z123"))


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory) -> Path:
    return tm.white_unet_file(tmp_path_factory.mktemp("unet") / "diffusion_pytorch_model.bin")


@pytest.fixture
def tiny(z123_dir, unet_file) -> list[str]:
    """Options pointing every stage at the tiny models (InstantMesh-style UNet file)."""
    return ["--mv-weights", str(z123_dir), "--unet", str(unet_file), *GEOLRM]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, z123_dir, unet_file) -> Path:
    """One complete run: video and textured mesh, default six views."""
    import sys

    from geolrm_cli.app import app
    from geolrm_cli.console import run_cli

    out = tmp_path_factory.mktemp("gen") / "out"
    args = ["--mv-weights", str(z123_dir), "--unet", str(unet_file), *GEOLRM]
    args += ["--steps", "2", "--tile", str(tm.TILE), "--video-frames", "3"]
    args += ["--video-resolution", "32", "--mesh", "--mesh-resolution", "24"]
    args += ["--texture", "--texture-size", "64"]
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["geolrm", "gen", str(PHOTO), "-o", str(out), *args])
    torch.set_num_threads(1)
    try:
        assert run_cli(app) == 0
    finally:
        mp.undo()
    return out


def test_outputs(full_run: Path) -> None:
    from pipelines.export.media import read_video
    from pipelines.splats.ply import load_ply

    names = sorted(p.name for p in full_run.iterdir())
    assert names == sorted(
        [
            "input.png",
            "views.png",
            "views",
            "model.ply",
            "cameras.json",
            "model_frame.json",
            "turntable.mp4",
            "mesh.glb",
        ]
    )
    with Image.open(full_run / "input.png") as im:
        assert im.mode == "RGBA" and im.size == (tm.COND, tm.COND)
    with Image.open(full_run / "views.png") as im:
        assert im.size == (2 * tm.TILE, 3 * tm.TILE)  # 3 rows x 2 columns
    assert sorted(p.name for p in (full_run / "views").iterdir()) == [
        "00.png",
        "01.png",
        "02.png",
        "03.png",
        "04.png",
        "05.png",
        "transforms.json",
    ]
    loaded = load_ply(full_run / "model.ply")
    assert len(loaded.gaussians) > 0
    # written for viewers in the 3DGS y-down habit (world +z becomes file -y)
    assert loaded.world_to_file[:3, 2].tolist() == [0.0, -1.0, 0.0]
    assert read_video(full_run / "turntable.mp4").shape[:3] == (3, 32, 32)
    mesh = trimesh.load(full_run / "mesh.glb", force="mesh", process=False)
    assert len(mesh.faces) > 0 and mesh.visual.kind == "texture"  # --texture
    assert mesh.visual.material.baseColorTexture.size == (64, 64)
    assert not [p for p in full_run.iterdir() if p.name.startswith(".")]  # staging removed


def test_views_match_grid_and_rig(full_run: Path) -> None:
    """views/NN.png are the grid's tiles (row k // 2, column k % 2), with the Zero123++ rig's
    cameras at the tile size in views/transforms.json."""
    import numpy as np

    from pipelines.cameras.dataparsers import load_transforms
    from pipelines.multiview.rigs import zero123pp_cameras

    grid = np.asarray(Image.open(full_run / "views.png"))
    t = tm.TILE
    for k in range(6):
        r, c = k // 2, k % 2
        tile = np.asarray(Image.open(full_run / "views" / f"{k:02d}.png"))
        assert np.array_equal(tile, grid[r * t : (r + 1) * t, c * t : (c + 1) * t])
    cams = load_transforms(full_run / "views" / "transforms.json")
    rig = zero123pp_cameras(6, size=t)
    assert torch.allclose(cams.c2w, rig.c2w, atol=1e-6)
    assert torch.allclose(cams.K, rig.K, atol=1e-4)
    meta = json.loads((full_run / "views" / "transforms.json").read_text())["geolrm"]
    assert meta["views"] == [0, 1, 2, 3, 4, 5] and meta["seed"] == 42


def test_recon_reruns_from_views(full_run: Path, tmp_path, cli) -> None:
    """`geolrm recon OUT/views` reproduces gen's Gaussians (same seed, same cameras)."""
    from pipelines.splats.ply import load_ply

    out = tmp_path / "recon"
    code, _, err = cli("recon", full_run / "views", *GEOLRM, "--no-video", "-o", out)
    assert code == 0, err
    a = load_ply(full_run / "model.ply").gaussians
    b = load_ply(out / "model.ply").gaussians
    assert torch.equal(a.means, b.means) and torch.equal(a.colors, b.colors)


def test_deterministic_rerun_into_same_folder(full_run: Path, tmp_path, tiny, cli) -> None:
    """The same seed gives the same bytes (views and Gaussians); rerunning into a folder
    without video / mesh drops the old turntable.mp4 and mesh.glb."""
    out = tmp_path / "again"
    shutil.copytree(full_run, out)
    code, _, err = cli("gen", PHOTO, "-o", out, *tiny, *FAST)
    assert code == 0, err
    for f in ("input.png", "views.png", "views/03.png", "model.ply"):
        assert (out / f).read_bytes() == (full_run / f).read_bytes(), f
    assert not (out / "turntable.mp4").exists() and not (out / "mesh.glb").exists()


def test_output_folders() -> None:
    from pipelines.generate import output_folders

    photos = [Path("a.png"), Path("a.jpg"), Path("b.png")]
    assert output_folders(photos, Path("o")) == [Path("o/a_png"), Path("o/a_jpg"), Path("o/b")]


def test_folder_skips_finished(tmp_path, tiny, cli) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTOS / "Input_2.png", photos / "lamp.png")
    shutil.copy(PHOTOS / "Input_8.png", photos / "bird.png")
    out = tmp_path / "out"
    code, _, err = cli("gen", photos, "-o", out, *tiny, *FAST, "--views", "4")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["batch.json", "bird", "lamp"]
    for sub in ("bird", "lamp"):
        assert (out / sub / "model.ply").is_file()
        tj = json.loads((out / sub / "views" / "transforms.json").read_text())
        assert [f["file_path"] for f in tj["frames"]] == ["00.png", "02.png", "04.png", "05.png"]
    stamp = (out / "lamp" / "model.ply").stat().st_mtime_ns
    code, _, err = cli("gen", photos, "-o", out, *tiny, *FAST)
    assert code == 0 and err.count("skipped: ") == 2, err
    assert (out / "lamp" / "model.ply").stat().st_mtime_ns == stamp
    (photos / "bird.png").unlink()
    code, _, err = cli("gen", photos, "-o", out, *tiny, *FAST, "--overwrite")
    assert code == 0 and "skipped: " not in err, err
    assert (out / "lamp" / "model.ply").stat().st_mtime_ns != stamp


# ------------------------------------------------------------------ error paths


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "geolrm"))
    return tmp_path


def test_missing_multiview_weights(empty_caches, tmp_path, cli) -> None:
    out = tmp_path / "out"
    code, _, err = cli("gen", PHOTO, "-o", out, *GEOLRM)
    assert code == 2
    assert_one_line_error(err, "'zero123pp'", "geolrm weights download zero123pp --accept-license")
    assert not out.exists()


def test_missing_instantmesh_unet(empty_caches, z123_dir, tmp_path, cli) -> None:
    code, _, err = cli("gen", PHOTO, "-o", tmp_path / "o", "--mv-weights", z123_dir, *GEOLRM)
    assert code == 2
    assert_one_line_error(err, "geolrm weights download instantmesh-unet")


def test_missing_geolrm_weights(empty_caches, tiny, tmp_path, cli) -> None:
    args = [a for a in tiny if a not in GEOLRM[:2]]  # drop --checkpoint FILE
    code, _, err = cli("gen", PHOTO, "-o", tmp_path / "o", *args)
    assert code == 2
    assert_one_line_error(err, "geolrm weights download geolrm")


def test_bad_image(tmp_path, tiny, cli) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    code, _, err = cli("gen", bad, "-o", out, *tiny, *FAST)
    assert code == 2
    assert_one_line_error(err, "bad.png", "cannot read image")
    assert not out.exists()


def test_no_alpha_and_no_rembg_model(empty_caches, tmp_path, tiny, cli) -> None:
    photo = tmp_path / "opaque.jpg"
    Image.new("RGB", (64, 48), (30, 120, 200)).save(photo)
    out = tmp_path / "out"
    code, _, err = cli("gen", photo, "-o", out, *tiny, *FAST)
    assert code == 2
    assert_one_line_error(err, "'u2net'", "U2NET_HOME", "geolrm weights download u2net")
    assert not out.exists()
    # --no-rembg uses the photo as is, as the official --no_rembg (run_geolrm_zero123.py:136):
    # shortest edge resized, centre crop, no framing in a transparent / white margin
    code, _, err = cli("gen", photo, "-o", out, *tiny, *FAST, "--no-rembg")
    assert code == 0, err
    assert (out / "model.ply").is_file()
    with Image.open(out / "input.png") as im:  # the (JPEG) photo's colour everywhere, opaque
        ext = im.convert("RGBA").getextrema()
    assert ext[3] == (255, 255)
    for (lo, hi), c in zip(ext[:3], (30, 120, 200), strict=True):
        assert c - 3 <= lo <= hi <= c + 3, ext


def test_refine_is_passed_through(tmp_path, tiny, cli) -> None:
    photo = tmp_path / "opaque.jpg"
    Image.new("RGB", (64, 48), (30, 120, 200)).save(photo)
    code, _, err = cli(
        "gen", photo, "-o", tmp_path / "out", *tiny, *FAST, "--no-rembg", "--refine", "3"
    )
    assert code == 0, err
    assert "refine (3)" in err


def test_zero123pp_is_handed_the_official_condition(tmp_path, tiny, cli, monkeypatch) -> None:
    """The Zero123++ pipeline gets what run_geolrm_zero123.py hands its pipeline: the framed
    photo on white at the photo's resolution (``to_rgb_image``), which its CLIP and VAE
    processors then resize each their own way, not the VAE-sized image."""
    from pipelines import preprocess as pp
    from pipelines.multiview.zero123pp import Zero123PlusPipeline

    seen = []
    call = Zero123PlusPipeline.__call__

    def spy(self, image, *args, **kwargs):
        seen.append(image.copy())
        return call(self, image, *args, **kwargs)

    monkeypatch.setattr(Zero123PlusPipeline, "__call__", spy)
    with Image.open(PHOTO) as im:
        want = pp.preprocess(im, size=tm.COND, background=(255, 255, 255)).condition
    code, _, err = cli("gen", PHOTO, "-o", tmp_path / "out", *tiny, *FAST)
    assert code == 0, err
    assert len(seen) == 1 and seen[0].size == want.size != (tm.COND, tm.COND)
    assert np.array_equal(np.asarray(seen[0]), np.asarray(want))


def test_bad_options(tmp_path, tiny, cli) -> None:
    code, _, err = cli("gen", PHOTO, "-o", tmp_path / "o", *tiny, *FAST, "--views", "5")
    assert code == 2
    assert_one_line_error(err, "6 views")
    code, _, err = cli("gen", tmp_path / "missing.png", "-o", tmp_path / "o", *tiny)
    assert code == 2
    assert_one_line_error(err, "no such file")


def test_texture_options() -> None:
    """A texture needs the mesh, and a sane size; both are checked before any work."""
    from pipelines.errors import InputError
    from pipelines.generate import Generator, GenOptions

    with pytest.raises(InputError, match="add --mesh"):
        Generator(GenOptions(texture_size=64))
    with pytest.raises(InputError, match="--texture-size"):
        Generator(GenOptions(mesh=True, texture_size=4))


# ------------------------------------------------------------------ SV3D


@pytest.fixture(scope="module")
def sv3d_dir(tmp_path_factory) -> Path:
    return tm.build_sv3d(tmp_path_factory.mktemp("sv3d"))


def test_sv3d_chain(tmp_path, sv3d_dir, cli) -> None:
    """--mv sv3d: 21 frames in views.png (7 x 3), the official 5-frame subset for --views 4
    with the SV3D rig's cameras (azimuth (i + 1) * 360 / 21, elevation as asked), the input
    as the last frame."""
    import numpy as np

    from pipelines.cameras.dataparsers import load_transforms
    from pipelines.multiview.rigs import sv3d_cameras

    out = tmp_path / "out"
    args = ["--mv", "sv3d", "--mv-weights", sv3d_dir, *GEOLRM, *FAST, "--views", "4"]
    code, _, err = cli("gen", PHOTO, "-o", out, *args, "--elevation", "5")
    assert code == 0, err
    assert "sv3d-nc-community" in err  # the licence is shown
    with Image.open(out / "views.png") as im:
        assert im.size == (7 * tm.SV3D_SIZE, 3 * tm.SV3D_SIZE)
    tj = json.loads((out / "views" / "transforms.json").read_text())
    assert [f["file_path"] for f in tj["frames"]] == [f"{i:02d}.png" for i in (0, 5, 10, 15, 20)]
    cams = load_transforms(out / "views" / "transforms.json")
    rig = sv3d_cameras(5.0, tm.SV3D_SIZE).subset([0, 5, 10, 15, 20])
    assert torch.allclose(cams.c2w, rig.c2w, atol=1e-6)
    last = np.asarray(Image.open(out / "views" / "20.png"), np.int16)
    with Image.open(out / "input.png") as im:
        framed = np.asarray(
            Image.alpha_composite(Image.new("RGBA", im.size, (255,) * 4), im).convert("RGB"),
            np.int16,
        )
    assert np.abs(last - framed).max() <= 1
    assert (out / "model.ply").is_file()


def test_sv3d_official_cameras(tmp_path, sv3d_dir, cli) -> None:
    """--official-cameras: SV3D frame i at azimuth i*360/21, the cameras GeoLRM's script gives
    them (``src/utils/camera_util.py:133``, ``np.linspace(0, 360, 21, endpoint=False)``;
    ``run_geolrm_sv3d.py:105``), recorded in views/transforms.json so `geolrm recon out/views`
    reruns with them, at SV3D's GeoLRM input size 560 (``run_geolrm_sv3d.py:103``)."""
    from pipelines.cameras.dataparsers import load_transforms
    from pipelines.multiview.rigs import sv3d_cameras
    from pipelines.reconstruct import default_size, input_rig

    out = tmp_path / "out"
    args = ["--mv", "sv3d", "--mv-weights", sv3d_dir, *GEOLRM, *FAST, "--views", "4"]
    code, _, err = cli("gen", PHOTO, "-o", out, *args, "--official-cameras")
    assert code == 0, err
    assert "dropped below opacity 0.005" in err
    cams = load_transforms(out / "views" / "transforms.json")
    rig = sv3d_cameras(10.0, tm.SV3D_SIZE, official_offset=True).subset([0, 5, 10, 15, 20])
    assert torch.allclose(cams.c2w, rig.c2w, atol=1e-6)
    assert abs(float(cams.c2w[0, 1, 3])) < 1e-6  # frame 0 at azimuth 0 (+x)
    assert default_size(input_rig(out / "views")) == 560
    code, _, err = cli("gen", PHOTO, "-o", tmp_path / "z", *GEOLRM, "--official-cameras")
    assert code == 2 and "--official-cameras is an SV3D option" in err, err


def test_sv3d_missing_weights(empty_caches, tmp_path, cli) -> None:
    code, _, err = cli("gen", PHOTO, "-o", tmp_path / "o", "--mv", "sv3d", *GEOLRM)
    assert code == 2
    assert_one_line_error(err, "geolrm weights download sv3d-p --accept-license", "gated")


# ------------------------------------------------------------------ GPU timing (-m gpu)


def stage_timings(device: str, small: bool = False, steps: dict | None = None) -> list[dict]:
    """Time every stage at the default settings with random weights of the released sizes
    (fp16 diffusion, fp32 GeoLRM): Zero123++ (75 steps, 960x640), GeoLRM on its 6 views at
    448 px, SV3D (50 steps, 21 x 576 px), GeoLRM on 21 views at 560 px. Returns one row per
    stage with seconds and peak CUDA memory (bytes; None on the CPU)."""
    import time

    from pipelines.geolrm import GeoLRM
    from pipelines.multiview.rigs import sv3d_cameras, zero123pp_cameras
    from pipelines.reconstruct import PreparedViews, reconstruct
    from pipelines.scene import to_model_frame

    steps = steps or {"zero123pp": 75, "sv3d": 50}
    cuda = device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    rows = []

    def timed(name, fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if cuda else None
        rows.append({"stage": name, "seconds": time.perf_counter() - t0, "peak_bytes": peak})
        return out

    photo = Image.open(PHOTO).convert("RGB")
    z = timed("load zero123pp (random, fp16)", lambda: tm.released_zero123pp(device, dtype, small))
    tile = tm.TILE if small else 320
    out = timed(
        f"zero123pp {steps['zero123pp']} steps",
        lambda: z(photo.resize((z.input_size,) * 2), steps["zero123pp"], tile_size=tile),
    )
    z = None  # free the Zero123++ weights before GeoLRM
    if cuda:
        torch.cuda.empty_cache()
    config = None
    if small:
        config = json.loads((ROOT / "examples" / "tiny" / "geolrm_tiny_config.json").read_text())
    model = timed("load GeoLRM (random)", lambda: GeoLRM.from_config(config).to(device))
    size6, size21 = (112, 112) if small else (448, 560)

    def recon(views: torch.Tensor, cams, size: int):
        x = torch.nn.functional.interpolate(views, size=(size, size), mode="bicubic")
        model_cams, m = to_model_frame(cams.resized(size, size))
        prep = PreparedViews(x.clamp(0, 1), cams.resized(size, size), model_cams, m)
        return reconstruct(prep, model, device=device, seed=0)

    timed("GeoLRM 6 views", lambda: recon(out.views, zero123pp_cameras(6, tile), size6))
    s = timed("load sv3d (random, fp16)", lambda: tm.released_sv3d(device, dtype, small))
    size = tm.SV3D_SIZE if small else 576
    frames = timed(f"sv3d {steps['sv3d']} steps", lambda: s(photo, steps["sv3d"], size=size)).frames
    s = None
    if cuda:
        torch.cuda.empty_cache()
    timed("GeoLRM 21 views", lambda: recon(frames, sv3d_cameras(10.0, size), size21))
    return rows


@pytest.mark.gpu
def test_gpu_stage_timings() -> None:
    """Prints (and, with GEOLRM_BENCH_OUT, writes as JSON) time and peak GPU memory of each
    stage at the default settings: `pytest -m gpu -s tests/test_gen.py`."""
    import os

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = stage_timings("cuda")
    for r in rows:
        print(f"{r['stage']:36s} {r['seconds']:8.2f} s {r['peak_bytes'] / 2**30:8.2f} GiB")
    if os.environ.get("GEOLRM_BENCH_OUT"):
        Path(os.environ["GEOLRM_BENCH_OUT"]).write_text(json.dumps(rows, indent=1))


def test_mps_standin_reruns_on_the_cpu(full_run: Path, tmp_path, tiny, cli, mps_standin) -> None:
    """``--device mps`` on a CPU stand-in (no Apple hardware here): the diffusion model fails
    to move to MPS like a missing operation, is reloaded on the CPU in fp32 and rerun, and
    GeoLRM reruns on the CPU; one note each, and the same bytes as the CPU run."""
    out = tmp_path / "mps"
    code, _, err = cli("gen", PHOTO, "-o", out, *tiny, *FAST, "--device", "mps")
    assert code == 0, err
    assert "Traceback" not in err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 3, err
    assert "running on Apple's MPS" in notes[0]
    assert notes[1].startswith("note: multi-view diffusion (zero123pp): aten::standin_op")
    assert notes[2].startswith("note: GeoLRM: aten::standin_op is not implemented on MPS")
    for f in ("input.png", "views.png", "views/03.png", "model.ply"):
        assert (out / f).read_bytes() == (full_run / f).read_bytes(), f
