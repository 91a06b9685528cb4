"""`geolrm eval`: PSNR / SSIM / Chamfer / F-score against hand-computed values, mesh frames,
an end-to-end run on the bundled Spot, and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import lpips_weights
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from pipelines.cameras.dataparsers import load_transforms
from pipelines.errors import InputError
from pipelines.evaluate import (
    chamfer_fscore,
    evaluate_gaussians,
    evaluate_mesh,
    load_gt_geometry,
    load_gt_images,
    load_mesh,
    lpips_metric,
    psnr,
    sample_mesh_points,
    ssim,
    to_json,
)
from pipelines.lpips import LPIPS
from pipelines.raster import rasterize
from pipelines.splats.io import load_gaussians
from pipelines.weights import REGISTRY_ENV, local_path

SPOT = Path(__file__).resolve().parents[1] / "examples" / "spot"


# --------------------------------------------------------------------------------------------
# PSNR


def test_psnr_constant_error_is_exact():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 8, 9, 3, generator=gen, dtype=torch.float64) * 0.5
    # |error| = 0.1 everywhere -> MSE 0.01 -> 20 dB; 0.01 -> 40 dB
    out = psnr(gt + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1), gt)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(20.0, abs=1e-6)
    assert out[1].item() == pytest.approx(40.0, abs=1e-6)
    # mixed signs and channels: errors (0.1, -0.2, 0.2) -> MSE (0.01 + 0.04 + 0.04) / 3 = 0.03
    pred = gt[0] + torch.tensor([0.1, -0.2, 0.2], dtype=torch.float64)
    assert psnr(pred, gt[0]).item() == pytest.approx(10 * math.log10(1 / 0.03), abs=1e-6)
    assert math.isinf(psnr(gt, gt)[0].item())
    # data range 255
    assert psnr(gt[0] * 255 + 25.5, gt[0] * 255, data_range=255.0).item() == pytest.approx(20.0)


def test_psnr_masked_counts_only_the_mask():
    gt = torch.full((10, 10, 3), 0.5)
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:5] = True  # half the image
    pred = gt.clone()
    pred[mask] += 0.2  # error 0.2 inside: MSE_in = 0.04
    pred[~mask] -= 0.1  # error 0.1 outside: MSE_out = 0.01
    assert psnr(pred, gt, mask).item() == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-6)
    assert psnr(pred, gt, ~mask).item() == pytest.approx(20.0, abs=1e-6)
    assert psnr(pred, gt).item() == pytest.approx(10 * math.log10(1 / 0.025), abs=1e-6)
    # error only outside the mask: masked PSNR is infinite; an empty mask gives NaN
    assert math.isinf(psnr(torch.where(mask[..., None], gt, pred), gt, mask).item())
    assert math.isnan(psnr(pred, gt, torch.zeros_like(mask)).item())
    with pytest.raises(InputError):
        psnr(pred, gt, mask[:5])
    with pytest.raises(InputError):
        psnr(pred, gt[:5])


# --------------------------------------------------------------------------------------------
# SSIM


def test_ssim_identical_is_one_and_constant_images_by_hand():
    x = torch.rand(2, 32, 24, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64), atol=1e-12)
    # constant images a, b: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.5, 0.01**2
    got = ssim(torch.full((16, 16, 3), a), torch.full((16, 16, 3), b)).item()
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-7)


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(2)
    base = torch.rand(48, 40, 3, generator=gen)
    # a smooth image and a noisy copy: SSIM well away from both 0 and 1
    base = torch.nn.functional.avg_pool2d(base.permute(2, 0, 1)[None], 5, 1, 2)[0].permute(1, 2, 0)
    noisy = (base + 0.1 * torch.randn(base.shape, generator=gen)).clamp(0, 1)
    pairs = [(base, noisy), (torch.rand(20, 31, 3, generator=gen), torch.rand(20, 31, 3))]
    for x, y in pairs:
        ref = structural_similarity(
            x.numpy().astype(np.float64),
            y.numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=-1,
        )
        assert ssim(x, y).item() == pytest.approx(ref, abs=1e-4)
        assert ssim(x, y).item() == pytest.approx(ref, abs=1e-9)  # in fact the same numbers
    assert 0.2 < ssim(base, noisy).item() < 0.95
    # batches give the per-image values
    batch = ssim(torch.stack([base, base]), torch.stack([noisy, base]))
    assert batch.shape == (2,) and batch[1].item() == pytest.approx(1.0)
    with pytest.raises(InputError, match="11x11"):
        ssim(torch.rand(10, 30, 3), torch.rand(10, 30, 3))


# --------------------------------------------------------------------------------------------
# LPIPS (VGG16): the real lpips heads (fixture) and a random VGG trunk in temporary caches


@pytest.fixture(scope="module")
def vgg_trunk() -> dict[str, torch.Tensor]:
    return lpips_weights.random_trunk(seed=7)


@pytest.fixture
def weight_caches(tmp_path, monkeypatch) -> Path:
    """Empty Hugging Face and geolrm weights caches (the real registry)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "geolrm_cache"))
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    return tmp_path


def _reference_lpips(trunk: dict[str, torch.Tensor]) -> LPIPS:
    net = LPIPS()
    net.load_trunk(trunk)
    net.load_heads(lpips_weights.heads())
    return net


def test_lpips_metric_needs_both_weights_and_names_their_downloads(weight_caches, vgg_trunk):
    fn, reason = lpips_metric()
    assert fn is None
    assert "`geolrm weights download vgg16`" in reason
    assert "`geolrm weights download lpips-vgg`" in reason
    lpips_weights.install(None)  # the heads only: the reason names just the trunk
    fn, reason = lpips_metric()
    assert fn is None and "download vgg16" in reason and "lpips-vgg" not in reason

    lpips_weights.install(vgg_trunk)
    fn, reason = lpips_metric()
    assert reason is None
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(24, 20, 3, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert fn(x, x) == 0.0
    # [H, W, 3] in [0, 1] -> [1, 3, H, W] in [-1, 1]
    want = float(
        _reference_lpips(vgg_trunk)(
            x.permute(2, 0, 1)[None] * 2 - 1, y.permute(2, 0, 1)[None] * 2 - 1
        )[0]
    )
    assert fn(x, y) == pytest.approx(want, rel=1e-6) and want > 0

    trunk_file = local_path("vgg16")
    trunk_file.write_bytes(b"truncated")
    fn, reason = lpips_metric()
    assert fn is None and "cannot read the weights" in reason and "model.safetensors" in reason


def _render_views(g, cams) -> torch.Tensor:
    """``[V, H, W, 3]`` renders on white in [0, 1], one view at a time as eval renders."""
    bg = torch.ones(3)
    views = [
        rasterize(g, cams.c2w[i : i + 1], cams.K[i : i + 1], cams.width, cams.height, background=bg)
        .rgb[0]
        .clamp(0, 1)
        for i in range(len(cams))
    ]
    return torch.stack(views)


def test_cli_eval_reports_the_vgg_lpips_of_the_test_views(cli, weight_caches, vgg_trunk, tmp_path):
    lpips_weights.install(vgg_trunk)
    model = tmp_path / "spot.ply"
    shutil.copy(SPOT / "spot.ply", model)
    report = tmp_path / "eval.json"
    code, out, err = cli("eval", model, "--gt", SPOT, "--resolution", "48", "--json", report)
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["lpips_net"] == "vgg" and "lpips_skipped" not in r
    assert "LPIPS (vgg)" in out and "LPIPS skipped" not in out

    # the same numbers from pipelines.lpips.LPIPS on the same ground truth and renders
    cams = load_transforms(SPOT / "transforms_test.json", require_images=True)
    gt, alphas, cams = load_gt_images(cams, 48)
    g = load_gaussians(model, assume_up="-y", quiet=True)
    renders = _render_views(g, cams)
    net = _reference_lpips(vgg_trunk)
    with torch.no_grad():
        want = net(renders.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2), normalize=True)
    got = torch.tensor([v["lpips"] for v in r["per_view"]], dtype=torch.float64)
    assert len(got) == 12 and torch.isfinite(got).all() and float(got.min()) > 0
    assert torch.allclose(got, want.double(), rtol=1e-5, atol=1e-8)  # measured: 5e-7
    assert r["lpips"] == pytest.approx(float(got.mean()), rel=1e-12)
    for v in r["per_view"]:  # the table prints the per-view values
        assert f"{v['lpips']:.4f}" in out

    # identical images (the renders as ground truth): LPIPS 0 in every view
    same = evaluate_gaussians(g, cams, renders, alphas)
    assert same["lpips"] == 0.0 and all(v["lpips"] == 0.0 for v in same["per_view"])
    assert same["lpips_net"] == "vgg"


# --------------------------------------------------------------------------------------------
# Chamfer / F-score


def _grid(spacing: float = 0.1, n: int = 6) -> np.ndarray:
    ax = np.arange(n) * spacing
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)


def test_chamfer_of_an_offset_copy_is_the_offset_length():
    p = _grid()  # spacing 0.1: each shifted point's nearest neighbour is its own original
    offset = np.array([0.003, -0.004, 0.0])  # length 0.005
    r = chamfer_fscore(p + offset, p, tau=0.01)
    assert r["chamfer"] == pytest.approx(0.005, abs=1e-12)
    assert r["accuracy"] == pytest.approx(0.005) and r["completeness"] == pytest.approx(0.005)
    assert r["precision"] == r["recall"] == r["fscore"] == 1.0
    r = chamfer_fscore(p + offset, p, tau=0.004)
    assert r["precision"] == r["recall"] == r["fscore"] == 0.0
    assert chamfer_fscore(p, p, tau=1e-9)["chamfer"] == 0.0


def test_chamfer_fscore_asymmetric_sets_by_hand():
    pred = np.zeros((1, 3))
    gt = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    r = chamfer_fscore(pred, gt, tau=0.01)
    # pred -> gt: 0; gt -> pred: (0 + 1) / 2; chamfer = (0 + 0.5) / 2
    assert r["accuracy"] == 0.0 and r["completeness"] == 0.5 and r["chamfer"] == 0.25
    assert r["precision"] == 1.0 and r["recall"] == 0.5
    assert r["fscore"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # tau is inclusive
    assert chamfer_fscore(pred, gt, tau=1.0)["recall"] == 1.0
    with pytest.raises(InputError):
        chamfer_fscore(np.zeros((0, 3)), gt)
    with pytest.raises(InputError):
        chamfer_fscore(pred, gt, tau=0.0)


# --------------------------------------------------------------------------------------------
# mesh sampling, frames, ground truth


def test_sample_unit_cube_and_sphere():
    import trimesh

    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    pts = sample_mesh_points(cube, 60_000, seed=3)
    assert pts.shape == (60_000, 3)
    # every point on the surface: max |coordinate| = 0.5; each of the 6 faces gets ~1/6
    assert np.allclose(np.abs(pts).max(1), 0.5, atol=1e-12)
    face_of = np.argmax(np.abs(pts), 1) * 2 + (
        pts[np.arange(len(pts)), np.argmax(np.abs(pts), 1)] > 0
    )
    counts = np.bincount(face_of, minlength=6) / len(pts)
    assert np.allclose(counts, 1 / 6, atol=0.01)
    assert np.abs(pts.mean(0)).max() < 0.01
    # same seed, same points; another seed, other points
    assert np.array_equal(pts, sample_mesh_points(cube, 60_000, seed=3))
    assert not np.array_equal(pts, sample_mesh_points(cube, 60_000, seed=4))

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    sp = sample_mesh_points(sphere, 20_000, seed=0)
    r = np.linalg.norm(sp, axis=1)
    assert r.max() <= 1.0 + 1e-9 and r.min() > 0.99  # flat faces sit just inside the sphere
    # two samplings of one sphere: Chamfer ~ half the sample spacing (sqrt(4 pi / 20k) = 0.025)
    res = chamfer_fscore(sp, sample_mesh_points(sphere, 20_000, seed=1), tau=0.05)
    assert res["chamfer"] < 0.02 and res["fscore"] == 1.0

    flat = trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=[[0, 1, 2]], process=False)
    with pytest.raises(InputError, match="zero surface area"):
        sample_mesh_points(flat, 10)


@pytest.mark.parametrize("ext", [".glb", ".obj", ".ply"])
def test_load_mesh_undoes_the_export_frame(tmp_path, ext):
    import trimesh

    from pipelines.mesh.export import export_mesh

    # a box off-centre along every axis, longest along z (z-up world)
    mesh = trimesh.creation.box(extents=(0.2, 0.4, 0.8))
    mesh.apply_translation((0.1, 0.2, 0.3))
    export_mesh(mesh, tmp_path / f"m{ext}")
    back = load_mesh(tmp_path / f"m{ext}")
    assert np.allclose(back.bounds, mesh.bounds, atol=1e-6)
    if ext != ".ply":  # read as z-up, a y-up file is the box lying on its side
        wrong = load_mesh(tmp_path / f"m{ext}", up="z")
        assert not np.allclose(wrong.bounds, mesh.bounds, atol=1e-3)
    with pytest.raises(InputError, match="not found"):
        load_mesh(tmp_path / "missing.glb")


def test_gt_geometry_points_subset_and_mesh_fallback(tmp_path):
    import trimesh

    pts = np.random.default_rng(0).random((500, 3)).astype(np.float32)
    np.save(tmp_path / "points.npy", pts)
    sub, src = load_gt_geometry(tmp_path, n=100, seed=0)
    assert src == "points.npy" and sub.shape == (100, 3)
    assert set(map(tuple, sub.astype(np.float32))) <= set(map(tuple, pts))
    full, _ = load_gt_geometry(tmp_path, n=10_000)
    assert np.array_equal(full, pts.astype(np.float64))

    other = tmp_path / "meshgt"
    other.mkdir()
    trimesh.creation.box(extents=(1, 1, 1)).export(other / "mesh.ply")
    got, src = load_gt_geometry(other, n=1000)
    assert src == "mesh.ply" and got.shape == (1000, 3)
    assert np.allclose(np.abs(got).max(1), 0.5)
    with pytest.raises(InputError, match="ground-truth geometry"):
        load_gt_geometry(_empty(tmp_path), n=10)
    np.save(other / "points.npy", np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        load_gt_geometry(other)


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    return d


def test_to_json_writes_non_finite_as_null():
    text = to_json({"a": float("inf"), "b": [float("nan"), 1.5], "c": {"d": None}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


# --------------------------------------------------------------------------------------------
# end to end on the bundled Spot


@pytest.fixture(scope="module")
def spot_out(tmp_path_factory):
    """A recon-like output folder: spot.ply as model.ply plus a coarse mesh.glb made from it."""
    from pipelines.mesh import export_mesh, gaussians_to_mesh
    from pipelines.splats.io import load_gaussians

    out = tmp_path_factory.mktemp("spot_out")
    shutil.copy(SPOT / "spot.ply", out / "model.ply")
    g = load_gaussians(out / "model.ply")
    mesh = gaussians_to_mesh(g, views=24, resolution=64, image_size=128, faces=20_000).mesh
    export_mesh(mesh, out / "mesh.glb")
    return out


def test_cli_eval_spot_end_to_end(cli, spot_out, weight_caches, tmp_path):
    report = tmp_path / "report" / "metrics.json"
    code, out, err = cli(
        "eval", spot_out, "--gt", SPOT, "--resolution", "128", "--points", "20000",
        "--json", report, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(report.read_text())
    assert (r["width"], r["height"], r["views"]) == (128, 128, 12)
    assert len(r["per_view"]) == 12
    # fitted to the train views only; measured: 29.7 dB white, 28.0 dB masked, SSIM 0.963
    assert r["psnr_white"] > 27.0
    assert r["psnr_masked"] > 25.0
    assert r["psnr_white"] > r["psnr_masked"]  # the white background flatters full frames
    assert min(v["psnr_white"] for v in r["per_view"]) > 25.0
    assert r["ssim"] > 0.93
    assert r["lpips"] is None and "lpips_net" not in r  # no LPIPS weights in the caches
    assert all(v["lpips"] is None for v in r["per_view"])
    # the coarse mesh (64 voxels over 0.9 units), 20k points: measured Chamfer 0.0052, F 0.970
    # (100k points: 0.0032, 0.997)
    m = r["mesh"]
    assert m["gt"] == "points.npy" and m["points"] == 20_000 and m["tau"] == 0.01
    assert m["path"].endswith("mesh.glb")
    assert m["chamfer"] < 0.01
    assert m["fscore"] > 0.9
    assert "PSNR masked" in out and "F-score" in out and "mean" in out
    assert str(report) in " ".join(err.split())


def test_mesh_in_the_wrong_frame_scores_badly(spot_out):
    # 20k points (spacing ~ tau): measured Chamfer 0.0052 / F-score 0.97 in the right frame
    good = evaluate_mesh(spot_out / "mesh.glb", SPOT, n_points=20_000)
    wrong = evaluate_mesh(spot_out / "mesh.glb", SPOT, n_points=20_000, up="z")
    assert good["fscore"] > 0.9
    assert wrong["chamfer"] > 5 * good["chamfer"] and wrong["fscore"] < 0.5


def test_cli_eval_file_without_mesh_or_lpips_weights(cli, weight_caches, tmp_path):
    model = tmp_path / "spot.ply"
    shutil.copy(SPOT / "spot.ply", model)
    code, out, err = cli("eval", model, "--gt", SPOT, "--resolution", "32")
    assert code == 0, err
    r = json.loads((tmp_path / "spot_eval.json").read_text())
    assert r["mesh"] is None and "no mesh found" in r["mesh_skipped"]
    assert "Mesh: skipped" in out
    assert r["lpips"] is None and all(v["lpips"] is None for v in r["per_view"])
    for name in ("vgg16", "lpips-vgg"):
        assert f"`geolrm weights download {name}`" in r["lpips_skipped"]
        assert f"`geolrm weights download {name}`" in " ".join(out.split())
    assert "LPIPS skipped: the LPIPS (VGG16) weights are not downloaded" in " ".join(out.split())


# --------------------------------------------------------------------------------------------
# bad input


def test_cli_eval_bad_inputs(cli, tmp_path):
    code, _, err = cli("eval", tmp_path / "nope", "--gt", SPOT)
    assert code == 2
    assert_one_line_error(err, "does not exist")

    empty = _empty(tmp_path)
    code, _, err = cli("eval", empty, "--gt", SPOT)
    assert code == 2
    assert_one_line_error(err, "no model.ply")

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(SPOT / "spot.ply", out / "model.ply")
    code, _, err = cli("eval", out, "--gt", empty)
    assert code == 2
    assert_one_line_error(err, "transforms_test.json")

    code, _, err = cli("eval", out, "--gt", tmp_path / "missing_gt")
    assert code == 2
    assert_one_line_error(err, "does not exist")

    code, _, err = cli("eval", out, "--gt", SPOT, "--mesh", tmp_path / "none.glb")
    assert code == 2
    assert_one_line_error(err, "--mesh", "not found")

    code, _, err = cli("eval", out, "--gt", SPOT, "--json", out / "model.ply")
    assert code == 2
    assert_one_line_error(err, "overwrite an input")

    code, _, err = cli("eval", out, "--gt", SPOT, "--tau", "0", "--resolution", "16")
    assert code == 2
    assert_one_line_error(err, "--tau")
    assert not (out / "eval.json").exists()

    not_model = tmp_path / "notes.txt"
    not_model.write_text("hi")
    code, _, err = cli("eval", not_model, "--gt", SPOT)
    assert code == 2
    assert_one_line_error(err, ".ply")
