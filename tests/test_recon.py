"""``geolrm recon``: golden reproduction through the CLI, frame round trip, bad inputs.

Everything runs the real command line (``run_cli(app)`` in-process, one case through the
installed ``geolrm`` script) on the tiny GeoLRM fixture at 112 px.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geolrm_cli.app import app
from geolrm_cli.console import run_cli
from pipelines.cameras import Cameras, invert_similarity, load_similarity, orbit_cameras
from pipelines.cameras.dataparsers import load_transforms
from pipelines.reconstruct import list_images, resolve_inputs
from pipelines.scene import to_model_frame
from pipelines.splats.ply import load_ply

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "geolrm_tiny"
VIEWS = FIXTURE / "tiny_views"
WEIGHTS = FIXTURE / "geolrm_tiny_weights.safetensors"
CONFIG = ROOT / "examples" / "tiny" / "geolrm_tiny_config.json"
TINY = ["--checkpoint", str(WEIGHTS), "--config", str(CONFIG), "--size", "112"]


def recon(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """Run ``geolrm recon ARGS`` through the CLI entry point; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["geolrm", "recon", *map(str, args)])
    capsys.readouterr()
    rc = run_cli(app)
    return rc, capsys.readouterr().err


def assert_clean_error(rc: int, err: str, out: Path, match: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    assert match.lower() in errors[0].lower(), errors[0]
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def assert_activated_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """1e-5 relative (2e-6 absolute near zero: the raw model output is within ~1.3e-6)."""
    diff = (actual - expected).abs()
    bad = diff > 1e-5 * expected.abs() + 2e-6
    assert not bad.any(), f"{name}: max abs diff {float(diff.max()):.3g}"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "geolrm_tiny_golden.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "geolrm_tiny_fixture.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny views reconstructed from the command line (with raw tensors, no video)."""
    out = tmp_path_factory.mktemp("recon") / "out"
    mp = pytest.MonkeyPatch()
    mp.setattr(
        sys,
        "argv",
        ["geolrm", "recon", str(VIEWS), *TINY, "-o", str(out), "--save-raw", "--no-video"],
    )
    try:
        assert run_cli(app) == 0
    finally:
        mp.undo()
    return out


# ------------------------------------------------------------------ happy path / golden


def test_outputs_written(tiny_run: Path) -> None:
    names = sorted(p.name for p in tiny_run.iterdir())
    assert names == sorted(["model.ply", "cameras.json", "model_frame.json", "raw.safetensors"])
    # the cameras used (user frame at 112 px) read back and match the input
    used = load_transforms(tiny_run / "cameras.json")
    given = load_transforms(VIEWS / "transforms.json")
    assert (used.width, used.height) == (112, 112)
    assert torch.allclose(used.c2w, given.c2w, atol=1e-6)
    assert torch.allclose(used.K, given.K, atol=1e-4)
    assert [p.resolve() for p in used.image_paths] == [p.resolve() for p in given.image_paths]
    # the tiny views are already in the model frame: the transform is exactly the identity
    assert torch.equal(load_similarity(tiny_run / "model_frame.json"), torch.eye(4).double())


def test_turntable_video(tmp_path, capsys, monkeypatch) -> None:
    from pipelines.export.media import read_video

    out = tmp_path / "out"
    args = ["--video-frames", "3", "--video-resolution", "32", "-o", out]
    rc, err = recon(capsys, monkeypatch, VIEWS, *TINY, *args)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.ply", "cameras.json", "model_frame.json", "turntable.mp4"]
    )
    frames = read_video(out / "turntable.mp4")
    assert frames.shape[:3] == (3, 32, 32)
    assert frames.min() < 200  # the object shows on the white background


def test_golden_gaussians_through_the_cli(tiny_run: Path, golden, meta) -> None:
    n_anchor = meta["anchor_count"]
    k = meta["tiny_config"]["lrm_generator"]["gs_per_token"]
    want = golden["pipeline.gaussians"][0, : n_anchor * k]
    raw = load_file(str(tiny_run / "raw.safetensors"))
    assert raw["gaussians"].shape == want.shape
    assert float((raw["gaussians"] - want).abs().max()) <= 1e-5
    assert torch.equal(raw["anchors"], golden["serializer.anchor_xyzs"][0])
    logits = golden["serializer.occupancy_logits"][0]
    assert float((raw["occupancy_logits"] - logits).abs().max()) <= 1e-5
    # model.ply: standard encoding (logit / log), compared activated
    loaded = load_ply(tiny_run / "model.ply")
    assert loaded.frame == "geolrm header" and not loaded.activated
    g = loaded.gaussians
    assert len(g) == n_anchor * k
    assert_activated_close(g.means, want[:, 0:3], "means")
    assert_activated_close(g.opacities, want[:, 3], "opacities")
    assert float(((g.scales - want[:, 4:7]).abs() / want[:, 4:7]).max()) <= 1e-5
    assert_activated_close(g.quats, want[:, 7:11], "quats")
    assert_activated_close(g.colors, want[:, 11:14], "colors")


def test_min_opacity_drops_faint_gaussians(
    tiny_run: Path, golden, meta, tmp_path, capsys, monkeypatch
):
    """--min-opacity keeps the Gaussians with opacity >= the threshold, as the official
    ``save_ply`` does with 0.005 (GeoLRM ``src/models/renderer/gaussian_renderer.py:184-185``:
    ``mask = opacity.squeeze(-1) >= 0.005``); the tiny model has none that faint, so a higher
    threshold shows the rule. The raw tensors keep every Gaussian; 0 keeps all."""
    from pipelines.defaults import MIN_OPACITY

    assert MIN_OPACITY == 0.005
    n = meta["anchor_count"] * meta["tiny_config"]["lrm_generator"]["gs_per_token"]
    want = golden["pipeline.gaussians"][0, :n]
    # a threshold in a gap of the sorted opacities: the CLI's output (within 2e-6 of the golden
    # one) falls on the same side of it
    v = want[:, 3].sort().values
    k = n // 2 + int(torch.argmax((v[n // 2 + 1 :] - v[n // 2 : -1] > 1e-4).int()))
    threshold = float((v[k] + v[k + 1]) / 2)
    keep = want[:, 3] >= threshold
    out = tmp_path / "out"
    args = ["--min-opacity", f"{threshold!r}", "--no-video", "--save-raw", "-o", out]
    rc, err = recon(capsys, monkeypatch, VIEWS, *TINY, *args)
    assert rc == 0, err
    assert f"{int((~keep).sum()):,} dropped below opacity" in err
    g = load_ply(out / "model.ply").gaussians
    assert len(g) == int(keep.sum()) < n
    assert_activated_close(g.means, want[keep, 0:3], "means")
    assert_activated_close(g.opacities, want[keep, 3], "opacities")
    assert load_file(str(out / "raw.safetensors"))["gaussians"].shape[0] == n
    rc, err = recon(
        capsys, monkeypatch, VIEWS, *TINY, "--min-opacity", "0", "--no-video", "-o", out
    )
    assert rc == 0, err
    assert len(load_ply(out / "model.ply").gaussians) == n
    rc, err = recon(capsys, monkeypatch, VIEWS, *TINY, "--min-opacity", "1", "-o", tmp_path / "x")
    assert_clean_error(rc, err, tmp_path / "x", "--min-opacity must be in [0, 1)")


def test_rig_input_size_and_official_cameras(tmp_path, capsys, monkeypatch) -> None:
    """Without --size, SV3D views enter GeoLRM at 560 px (GeoLRM ``run_geolrm_sv3d.py:103``:
    ``v2.functional.resize(images, 560, ...)``), Zero123++ views at 448
    (``run_geolrm_zero123.py:170``) and the user's own cameras at 448. --official-cameras puts
    SV3D frame i at azimuth i*360/21 (``src/utils/camera_util.py:133``:
    ``np.linspace(0, 360, 21, endpoint=False)``); the default is (i+1)*360/21."""
    from pipelines.multiview.rigs import sv3d_cameras
    from pipelines.reconstruct import default_size, input_rig

    src = sorted((VIEWS / "images").iterdir())[0]
    folder = tmp_path / "sv3d_views"
    folder.mkdir()
    for i in range(21):
        shutil.copy(src, folder / f"{i:02d}.png")
    no_size = TINY[:4]  # without --size
    out = tmp_path / "out"
    rc, err = recon(
        capsys, monkeypatch, folder, "--cameras", "sv3d", "--official-cameras", *no_size,
        "--no-video", "-o", out,
    )  # fmt: skip
    assert rc == 0, err
    used = json.loads((out / "cameras.json").read_text())["geolrm"]
    assert used["size"] == 560
    official = sv3d_cameras(10.0, 560, official_offset=True).c2w.double()
    got = torch.tensor(used["model_frame_transform_matrices"], dtype=torch.float64)
    assert torch.allclose(got, official, atol=1e-6)
    az = torch.rad2deg(torch.atan2(official[:, 1, 3], official[:, 0, 3])) % 360
    assert torch.allclose(az, torch.arange(21, dtype=torch.float64) * 360 / 21, atol=1e-9)
    default = sv3d_cameras(10.0, 560).c2w.double()
    az_default = torch.rad2deg(torch.atan2(default[:, 1, 3], default[:, 0, 3])) % 360
    assert torch.allclose(az_default[:20], az[1:], atol=1e-9) and abs(float(az_default[20])) < 1e-9
    # the rule itself, for each kind of input
    assert default_size(input_rig(folder, "sv3d")) == 560
    assert default_size(input_rig(folder, "zero123pp")) == 448
    assert input_rig(VIEWS) is None and default_size(input_rig(VIEWS)) == 448
    # --official-cameras belongs to the SV3D rig
    rc, err = recon(capsys, monkeypatch, VIEWS, *TINY, "--official-cameras", "-o", tmp_path / "y")
    assert_clean_error(rc, err, tmp_path / "y", "--official-cameras applies to SV3D views")


def _random_similarity(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(4, generator=gen, dtype=torch.float64), dim=0)
    w, x, y, z = q.tolist()
    rot = torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = 2.7 * rot
    m[:3, 3] = torch.randn(3, generator=gen, dtype=torch.float64) * 3.0
    return m


def test_frame_round_trip(tiny_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Cameras moved by a similarity S: the Gaussians come back in that frame (= S x golden)."""
    s = _random_similarity(11)
    views = tmp_path / "moved"
    shutil.copytree(VIEWS / "images", views / "images")
    cams = load_transforms(VIEWS / "transforms.json").transformed(s)
    (views / "cams.json").write_text(json.dumps(cams.to_transforms_json(base_dir=views)))
    out = tmp_path / "out"
    rc, err = recon(
        capsys, monkeypatch, views / "cams.json", *TINY, "--no-video", "--save-raw", "-o", out
    )
    assert rc == 0, err
    base = load_ply(tiny_run / "model.ply").gaussians
    moved = load_ply(out / "model.ply").gaussians
    assert len(moved) == len(base)
    back = moved.transformed(invert_similarity(s).float())
    assert float((back.means - base.means).abs().max()) <= 1e-4
    assert float((back.scales - base.scales).abs().max()) <= 1e-4 * 0.02
    assert float((back.opacities - base.opacities).abs().max()) <= 1e-4
    assert float((back.colors - base.colors).abs().max()) <= 1e-4
    dots = (back.quats * base.quats).sum(-1).abs()  # q and -q are one rotation
    assert float((1 - dots).abs().max()) <= 1e-4
    # the saved transform is the inverse of S, and the raw (model-frame) output is unchanged
    m = load_similarity(out / "model_frame.json")
    assert torch.allclose(m @ s, torch.eye(4, dtype=torch.float64), atol=1e-5)
    raw, raw0 = (load_file(str(p / "raw.safetensors")) for p in (out, tiny_run))
    assert torch.equal(raw["anchors"], raw0["anchors"])
    assert float((raw["gaussians"] - raw0["gaussians"]).abs().max()) <= 1e-4


def test_to_model_frame_is_canonical() -> None:
    cams = orbit_cameras(5, elevation_deg=15.0, radius=1.5, size=64, start_azimuth_deg=30.0)
    same, m = to_model_frame(cams)  # already in the model frame: untouched
    assert torch.equal(m, torch.eye(4, dtype=torch.float64))
    assert torch.equal(same.c2w, cams.c2w)
    a, ma = to_model_frame(cams.transformed(_random_similarity(1)))
    b, mb = to_model_frame(cams.transformed(_random_similarity(2)))
    assert torch.allclose(a.c2w, b.c2w, atol=1e-5)
    az = math.degrees(math.atan2(float(a.centers[0, 1]), float(a.centers[0, 0])))
    assert abs(az) < 1e-4 and abs(float(a.centers[0].norm()) - 1.5) < 1e-5


def test_named_rig_and_sorted_images(tmp_path: Path) -> None:
    folder = tmp_path / "rig"
    folder.mkdir()
    src = sorted((VIEWS / "images").iterdir())[0]
    for i in (0, 1, 2, 3, 10, 20):
        shutil.copy(src, folder / f"{i}.png")
    assert [p.stem for p in list_images(folder)] == ["0", "1", "2", "3", "10", "20"]
    cams = resolve_inputs(folder, "zero123pp")
    assert len(cams) == 6 and cams.width == 112
    assert [p.stem for p in cams.image_paths] == ["0", "1", "2", "3", "10", "20"]
    assert torch.equal(to_model_frame(cams)[1], torch.eye(4, dtype=torch.float64))


# ------------------------------------------------------------------ bad inputs


def _views_copy(tmp_path: Path) -> Path:
    views = tmp_path / "views"
    shutil.copytree(VIEWS, views)
    return views


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_rig_count_mismatch(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    images = _views_copy(tmp_path) / "images"  # 3 images
    rc, err = recon(capsys, monkeypatch, images, "--cameras", "zero123pp", *TINY, "-o", out)
    assert_clean_error(rc, err, out, "zero123pp rig has 6 or 4 views")
    rc, err = recon(capsys, monkeypatch, images, "--cameras", "sv3d", *TINY, "-o", out)
    assert_clean_error(rc, err, out, "21 views")


def test_image_camera_count_mismatch(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    views = _views_copy(tmp_path)
    # a frame whose image is missing
    (views / "images" / "002.png").unlink()
    rc, err = recon(capsys, monkeypatch, views, *TINY, "-o", out)
    assert_clean_error(rc, err, out, "frame 2 image 'images/002.png' not found")
    # cameras without file_path take the folder's images in order: 3 cameras, 2 images
    cams = views / "cams.json"
    shutil.copy(views / "transforms.json", cams)
    _edit_json(cams, lambda d: [f.pop("file_path") for f in d["frames"]])
    rc, err = recon(capsys, monkeypatch, views / "images", "--cameras", cams, *TINY, "-o", out)
    assert_clean_error(rc, err, out, "3 cameras")
    # a folder of views with one image more than the camera file has cameras
    shutil.copy(VIEWS / "images" / "002.png", views / "images" / "002.png")
    shutil.copy(VIEWS / "images" / "002.png", views / "images" / "003.png")
    rc, err = recon(
        capsys, monkeypatch, views / "images", "--cameras", views / "transforms.json", *TINY,
        "-o", out,
    )  # fmt: skip
    assert_clean_error(rc, err, out, "holds 4 images")


def test_unreadable_image(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    views = _views_copy(tmp_path)
    (views / "images" / "001.png").write_bytes(b"not a png at all")
    rc, err = recon(capsys, monkeypatch, views, *TINY, "-o", out)
    assert_clean_error(rc, err, out, "cannot read image")
    assert (views / "images" / "001.png").read_bytes() == b"not a png at all"


@pytest.mark.parametrize(
    "text, match",
    [
        ("{ not json", "not valid json"),
        ('{"frames": []}', "frames"),
        ('{"w": 112, "h": 112, "fl_x": 150, "frames": [{"file_path": "images/000.png", '
         '"transform_matrix": [[1, 0, 0], [0, 1, 0]]}]}', "not 4x4"),
    ],
)  # fmt: skip
def test_bad_camera_file(tmp_path, capsys, monkeypatch, text: str, match: str) -> None:
    out = tmp_path / "out"
    views = _views_copy(tmp_path)
    (views / "transforms.json").write_text(text)
    rc, err = recon(capsys, monkeypatch, views, *TINY, "-o", out)
    assert_clean_error(rc, err, out, match)


def test_degenerate_cameras(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    views = _views_copy(tmp_path)

    def same_point(d):
        for f in d["frames"]:
            for r in range(3):
                f["transform_matrix"][r][3] = 0.5

    _edit_json(views / "transforms.json", same_point)
    rc, err = recon(capsys, monkeypatch, views, *TINY, "-o", out)
    assert_clean_error(rc, err, out, "same point")


def test_wrong_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    # tiny weights with the released architecture
    rc, err = recon(capsys, monkeypatch, VIEWS, "--checkpoint", WEIGHTS, "--size", 112, "-o", out)
    assert_clean_error(rc, err, out, "checkpoint does not match the GeoLRM config")
    # a truncated file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(WEIGHTS.read_bytes()[:5000])
    rc, err = recon(capsys, monkeypatch, VIEWS, *TINY, "--checkpoint", cut, "-o", out)
    assert_clean_error(rc, err, out, "cannot read safetensors")
    # a config that is not JSON
    rc, err = recon(capsys, monkeypatch, VIEWS, *TINY, "--config", WEIGHTS, "-o", out)
    assert_clean_error(rc, err, out, "config")


def test_missing_weights(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    rc, err = recon(capsys, monkeypatch, VIEWS, "--size", 112, "-o", out)
    assert_clean_error(rc, err, out, "model weights 'geolrm' are not in the local cache")
    assert "geolrm weights download geolrm" in err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--size", "100"], "not a multiple of 14"),
        (["--cameras", "nope.json"], "no such camera file"),
        (["--checkpoint", "nope.safetensors"], "--checkpoint nope.safetensors not found"),
    ],
)
def test_bad_options(tmp_path, capsys, monkeypatch, extra, match) -> None:
    out = tmp_path / "out"
    rc, err = recon(capsys, monkeypatch, VIEWS, *TINY, *extra, "-o", out)
    assert_clean_error(rc, err, out, match)


def test_output_is_a_file_or_an_input(tmp_path, capsys, monkeypatch) -> None:
    views = _views_copy(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = recon(capsys, monkeypatch, views, *TINY, "-o", blocker)
    assert rc == 2 and "is a file" in err
    cams = views / "cams.json"
    shutil.copy(views / "transforms.json", cams)
    shutil.move(cams, views / "images" / "cameras.json")
    _edit_json(
        views / "images" / "cameras.json",
        lambda d: [f.update(file_path=f["file_path"][len("images/") :]) for f in d["frames"]],
    )
    before = (views / "images" / "cameras.json").read_bytes()
    rc, err = recon(
        capsys, monkeypatch, views / "images" / "cameras.json", *TINY, "-o", views / "images"
    )
    assert rc == 2 and "would overwrite an input" in err
    assert (views / "images" / "cameras.json").read_bytes() == before


def test_bf16_on_cpu_is_a_one_line_error(tmp_path) -> None:
    """Through the installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("geolrm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "geolrm_cli.app"]
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            *cmd,
            "recon",
            str(VIEWS),
            *TINY,
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_clean_error(proc.returncode, proc.stderr, out, "--precision bf16 needs a CUDA device")
    assert proc.stdout == ""


def test_cameras_only_file_matches_sorted_images(tmp_path) -> None:
    views = _views_copy(tmp_path)
    cams = tmp_path / "cams.json"
    shutil.copy(views / "transforms.json", cams)
    _edit_json(cams, lambda d: [f.pop("file_path") for f in d["frames"]])
    got = resolve_inputs(views / "images", cams)
    assert [p.name for p in got.image_paths] == ["000.png", "001.png", "002.png"]
    assert isinstance(got, Cameras)


def test_no_camera_file(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    rc, err = recon(capsys, monkeypatch, VIEWS / "images", *TINY, "-o", out)
    assert_clean_error(rc, err, out, "has no transforms.json; pass --cameras")


def _fake_result():
    from pipelines.scene import GeoLRMExtras, Scene
    from pipelines.splats.gaussians import Gaussians

    gen = torch.Generator().manual_seed(0)
    n = 50
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    g = Gaussians(
        torch.rand(n, 3, generator=gen) - 0.5,
        torch.rand(n, 3, generator=gen) * 0.02 + 1e-3,
        quats,
        torch.rand(n, generator=gen) * 0.9 + 0.05,
        torch.rand(n, 3, generator=gen),
    )
    cams = load_transforms(VIEWS / "transforms.json")
    return Scene(
        gaussians=g,
        gaussians_model=g,
        model_from_user=torch.eye(4, dtype=torch.float64),
        cameras=cams,
        cameras_model=cams,
        geolrm=GeoLRMExtras(
            anchors=g.means.clone(),
            occupancy_logits=torch.zeros(4, 4, 4),
            raw_gaussians=torch.zeros(n, 14),
            gs_per_token=1,
        ),
    )


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, existing: bool) -> None:
    import pipelines.outputs as rc
    from pipelines.defaults import TurntableConfig

    out = tmp_path / "new" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "model.ply").write_bytes(b"previous run")

    def broken_video(path, *args, **kwargs):
        Path(path).write_bytes(b"half a video")
        raise KeyboardInterrupt

    monkeypatch.setattr(rc, "_write_video", broken_video)
    with pytest.raises(KeyboardInterrupt):
        rc.write_outputs(_fake_result(), out, save_raw=True, video=TurntableConfig())
    if existing:  # the earlier output is untouched, nothing else appeared
        assert [p.name for p in out.iterdir()] == ["model.ply"]
        assert (out / "model.ply").read_bytes() == b"previous run"
    else:  # the folders this call created are gone again
        assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    written = rc.write_outputs(_fake_result(), out, save_raw=True, video=None)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    assert len(load_ply(out / "model.ply").gaussians) == 50


def test_mps_standin_end_to_end(cli, mps_standin, golden, tmp_path) -> None:
    """``--device mps`` on a CPU stand-in (no Apple hardware here): GeoLRM hits the stand-in's
    missing operation and reruns on the CPU (the golden Gaussians, one note); refinement,
    turntable and mesh take the CPU paths (an MPS tensor would fail on this torch); exit 0."""
    out = tmp_path / "out"
    args = [VIEWS, *TINY, "--device", "mps", "--save-raw", "--refine", "1", "-o", out]
    args += ["--video-frames", "2", "--video-resolution", "32", "--mesh", "--mesh-resolution", "16"]
    code, _, err = cli("recon", *args)
    assert code == 0, err
    assert "Traceback" not in err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 2, err
    assert "running on Apple's MPS" in notes[0] and "untested on Apple hardware" in notes[0]
    assert notes[1] == (
        "note: GeoLRM: aten::standin_op is not implemented on MPS; rerunning it on the CPU"
    )
    for name in ("model.ply", "raw.safetensors", "turntable.mp4", "mesh.glb"):
        assert (out / name).is_file(), name
    raw = load_file(str(out / "raw.safetensors"))
    want = golden["pipeline.gaussians"][0, : len(raw["gaussians"])]
    assert raw["gaussians"].shape == want.shape
    assert float((raw["gaussians"] - want).abs().max()) <= 1e-5
