"""Per-scene optimisation: visual hull, densify / prune, the fitting loop, ``recon --method
optimize`` and ``recon --refine`` (small resolutions, a few dozen steps)."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geolrm_cli.app import app
from geolrm_cli.console import run_cli
from pipelines.cameras import Cameras, orbit_cameras
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.images import load_masks, load_views
from pipelines.errors import InputError
from pipelines.optimize import (
    TrainConfig,
    carve_visual_hull,
    hull_gaussians,
    optimize_gaussians,
    optimize_views,
)
from pipelines.optimize.losses import ssim_3dgs
from pipelines.optimize.ops import (
    clone_gaussians,
    new_optimizers,
    params_from_gaussians,
    prune_gaussians,
    reset_opacity,
    split_gaussians,
)
from pipelines.optimize.strategy import DensifyState, densify_and_prune, view_contributions
from pipelines.optimize.views import novel_camera
from pipelines.optimize.visual_hull import quat_z_to
from pipelines.raster import rasterize
from pipelines.splats.gaussians import Gaussians, quat_to_matrix
from pipelines.splats.ply import load_ply

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
FIXTURE = ROOT / "tests" / "fixtures" / "geolrm_tiny"
TINY_VIEWS = FIXTURE / "tiny_views"
TINY = [
    "--checkpoint",
    str(FIXTURE / "geolrm_tiny_weights.safetensors"),
    "--config",
    str(ROOT / "examples" / "tiny" / "geolrm_tiny_config.json"),
    "--size",
    "112",
]


def recon(capsys, monkeypatch, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["geolrm", "recon", *map(str, args)])
    capsys.readouterr()
    code = run_cli(app)
    return code, capsys.readouterr().err


def one_error(code: int, err: str, match: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert match.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def spot64() -> tuple[Cameras, torch.Tensor, torch.Tensor]:
    """Spot's 21 training views at 64 px: cameras, images [V,3,64,64], masks [V,64,64]."""
    cams = load_transforms(SPOT / "transforms_train.json")
    images, used = load_views(cams, 64)
    return used, images, load_masks(cams, 64)


# ------------------------------------------------------------------ visual hull


def sphere_masks(cams: Cameras, centre: torch.Tensor, radius: float) -> torch.Tensor:
    """Exact silhouettes of a sphere: pixel centres whose ray hits it."""
    j, i = torch.meshgrid(
        torch.arange(cams.height, dtype=torch.float64) + 0.5,
        torch.arange(cams.width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    out = []
    for v in range(len(cams)):
        k, c2w = cams.K[v].double(), cams.c2w[v].double()
        d = torch.stack(
            [(i - k[0, 2]) / k[0, 0], -(j - k[1, 2]) / k[1, 1], -torch.ones_like(i)], -1
        )
        d = torch.nn.functional.normalize(d @ c2w[:3, :3].T, dim=-1)
        oc = c2w[:3, 3] - centre
        b = (d * oc).sum(-1)
        out.append((b * b - (oc @ oc - radius**2) >= 0).float())
    return torch.stack(out)


def test_visual_hull_of_a_sphere() -> None:
    cams = load_transforms(SPOT / "transforms_train.json").resized(96, 96)
    centre, radius = torch.tensor([0.05, -0.03, 0.02], dtype=torch.float64), 0.3
    hull = carve_visual_hull(cams, sphere_masks(cams, centre, radius), resolution=64)
    # it contains the sphere (shrunk by half a voxel diagonal: voxels are kept by their centre)
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(20000, 3, generator=gen, dtype=torch.float64))
    r = torch.rand(20000, 1, generator=gen, dtype=torch.float64) ** (1 / 3)
    pts = centre + dirs * r * (radius - 0.87 * hull.voxel)
    assert bool(hull.contains(pts).all())
    # and is within a few percent of its volume (21 views on a ring cut it close)
    ratio = hull.volume / (4 / 3 * math.pi * radius**3)
    assert 0.96 < ratio < 1.04, ratio
    # nothing far outside it
    far = centre + dirs * (radius + 3 * hull.voxel)
    assert not bool(hull.contains(far).any())
    # initial Gaussians: on the surface, coloured by the (uniformly red) views
    images = torch.tensor([0.9, 0.1, 0.2]).view(1, 3, 1, 1).expand(len(cams), 3, 96, 96)
    g = hull_gaussians(hull, cams, images, 2000, surface_fraction=1.0, seed=0)
    again = hull_gaussians(hull, cams, images, 2000, surface_fraction=1.0, seed=0)
    assert torch.equal(g.means, again.means) and torch.equal(g.colors, again.colors)
    dist = (g.means.double() - centre).norm(dim=-1)
    assert float((dist - radius).abs().max()) < 2.5 * hull.voxel
    assert torch.allclose(g.colors, torch.tensor([0.9, 0.1, 0.2]).expand(2000, 3), atol=1e-4)
    assert bool((g.scales > 0).all()) and bool((g.scales < 2.01 * hull.voxel).all())
    # tangent discs: local z along the sphere's outward normal, thin along it
    discs = hull_gaussians(hull, cams, images, 2000, surface_fraction=1.0, seed=0, thickness=0.05)
    assert torch.equal(discs.means, g.means)
    axis = quat_to_matrix(discs.quats.double())[:, :, 2]
    radial = torch.nn.functional.normalize(discs.means.double() - centre, dim=-1)
    cos = (axis * radial).sum(-1)
    assert float(cos.median()) > 0.99 and float((cos > 0.9).float().mean()) > 0.97
    assert torch.allclose(discs.scales[:, 2], 0.05 * discs.scales[:, 0])
    assert torch.equal(discs.scales[:, :2], g.scales[:, :2])


def test_quat_z_to() -> None:
    n = torch.nn.functional.normalize(
        torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    )
    n[0], n[1] = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, -1.0])
    rot = quat_to_matrix(quat_z_to(n))
    assert torch.allclose(rot[:, :, 2], n.double(), atol=1e-7)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(500, dtype=torch.float64))


def test_visual_hull_rejects_empty_masks() -> None:
    cams = load_transforms(SPOT / "transforms_train.json").resized(32, 32)
    with pytest.raises(InputError, match="visual hull is empty"):
        carve_visual_hull(cams, torch.zeros(len(cams), 32, 32), resolution=16)


def test_spot_hull_covers_the_ground_truth_surface(spot64) -> None:
    cams, _, masks = spot64
    hull = carve_visual_hull(cams, masks, resolution=48, margin_px=0.5)
    pts = torch.from_numpy(np.load(SPOT / "points.npy")).double()  # on the true surface
    # surface points sit on the hull's boundary: within one voxel of it
    grown = torch.nn.functional.max_pool3d(hull.occupied[None, None].float(), 3, 1, 1)[0, 0]
    assert float(replace(hull, occupied=grown > 0).contains(pts).float().mean()) > 0.995
    assert float(hull.contains(pts).float().mean()) > 0.5


# ------------------------------------------------------------------ losses, densify, prune


def test_ssim_3dgs() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    assert abs(float(ssim_3dgs(x, x)) - 1.0) < 1e-5
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert float(ssim_3dgs(x, y)) < 0.9
    assert float(ssim_3dgs(x, y)) == pytest.approx(float(ssim_3dgs(y, x)), abs=1e-6)


def _toy(n: int = 6) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(1)
    g = Gaussians(
        means=torch.randn(n, 3, generator=gen),
        scales=torch.full((n, 3), 0.01),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        opacities=torch.full((n,), 0.5),
        colors=torch.rand(n, 3, generator=gen),
    )
    params = params_from_gaussians(g)
    opts = new_optimizers(params, dict.fromkeys(params, 1e-2))
    # one Adam step so that every parameter has moments to carry along
    loss = sum((p * (i + 1)).sum() for i, p in enumerate(params.values()))
    loss.backward()
    for o in opts.values():
        o.step()
    return params, opts


def _moments(opts, params, name):
    return opts[name].state[params[name]]["exp_avg"]


def test_clone_copies_rows_and_moments() -> None:
    params, opts = _toy()
    before = {k: v.detach().clone() for k, v in params.items()}
    m_before = _moments(opts, params, "means").clone()
    sel = torch.tensor([True, False, False, True, False, False])
    assert clone_gaussians(params, opts, sel) == 2
    assert len(params["means"]) == 8
    for k, v in params.items():
        assert torch.equal(v.detach()[:6], before[k])
        assert torch.equal(v.detach()[6:], before[k][sel])
        assert v.requires_grad and opts[k].param_groups[0]["params"][0] is v
    m = _moments(opts, params, "means")
    assert torch.equal(m[:6], m_before) and not m[6:].any()


def test_split_replaces_by_two_smaller() -> None:
    params, opts = _toy()
    before = {k: v.detach().clone() for k, v in params.items()}
    sel = torch.tensor([False, True, False, False, False, True])
    n = split_gaussians(params, opts, sel, torch.Generator().manual_seed(0))
    assert n == 2 and len(params["means"]) == 8
    kept = before["means"][~sel]
    assert torch.equal(params["means"].detach()[:4], kept)
    children = params["means"].detach()[4:].reshape(2, 2, 3)  # [copy, selected, 3]
    parents = before["means"][sel]
    assert float((children - parents).norm(dim=-1).max()) < 6 * 0.01
    assert torch.allclose(
        params["scales"].detach()[4:], before["scales"][sel].repeat(2, 1) - math.log(1.6)
    )
    assert torch.equal(params["colors"].detach()[4:], before["colors"][sel].repeat(2, 1))
    assert len(_moments(opts, params, "scales")) == 8


def test_prune_and_reset_opacity() -> None:
    params, opts = _toy()
    before = params["colors"].detach().clone()
    remove = torch.tensor([True, False, True, False, False, False])
    assert prune_gaussians(params, opts, remove) == 2
    assert torch.equal(params["colors"].detach(), before[~remove])
    assert all(len(v) == 4 for v in params.values())
    reset_opacity(params, opts, 0.01)
    assert float(torch.sigmoid(params["opacities"].detach()).max()) <= 0.01 + 1e-6
    assert not _moments(opts, params, "opacities").any()


def test_densify_and_prune_rules() -> None:
    params, opts = _toy(6)
    with torch.no_grad():
        params["scales"][2:4] = math.log(0.2)  # large: split when the gradient is high
        params["scales"][4] = math.log(5.0)  # huge: pruned
        params["opacities"][5] = -8.0  # transparent: pruned
    state = DensifyState.zeros(6, "cpu")
    state.grad2d[:] = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    state.count[:] = 2.0
    cfg = TrainConfig(grad_threshold=0.1, clone_scale=0.05, prune_scale=0.5)
    counts = densify_and_prune(params, opts, state, cfg, 2.0, torch.Generator().manual_seed(0))
    assert counts == {"cloned": 1, "split": 1, "pruned": 2}
    assert len(params["means"]) == 6  # 6 + 1 clone + 1 net split - 2 pruned
    assert len(state.grad2d) == 6 and not state.grad2d.any() and not state.count.any()
    # the cap keeps only the strongest candidates
    params, opts = _toy(6)
    state = DensifyState.zeros(6, "cpu")
    state.grad2d[:] = torch.tensor([1.0, 3.0, 2.0, 0.0, 0.0, 0.0])
    state.count[:] = 1.0
    cfg = TrainConfig(grad_threshold=0.1, clone_scale=0.05, max_gaussians=7)
    before = params["means"].detach().clone()
    counts = densify_and_prune(params, opts, state, cfg, 2.0, torch.Generator().manual_seed(0))
    assert counts["cloned"] == 1 and len(params["means"]) == 7
    assert torch.equal(params["means"].detach()[6], before[1])


# ------------------------------------------------------------------ the loop


def _train_psnr(g: Gaussians, cams: Cameras, images: torch.Tensor) -> float:
    with torch.no_grad():
        out = rasterize(g, cams.c2w, cams.K, cams.width, cams.height, (1.0, 1.0, 1.0))
    mse = ((out.rgb - images.permute(0, 2, 3, 1)) ** 2).mean()
    return float(-10 * torch.log10(mse))


@pytest.fixture(scope="module")
def spot_init(spot64) -> Gaussians:
    """3,000 Gaussians on Spot's visual hull (64 px views)."""
    cams, images, masks = spot64
    hull = carve_visual_hull(cams, masks, resolution=48, margin_px=0.5)
    return hull_gaussians(hull, cams, images, 3000, seed=0, masks=masks)


def test_optimizer_reduces_loss(spot64, spot_init) -> None:
    cams, images, masks = spot64
    init = spot_init
    losses = []
    # one densification round half way (more would be noise in so short a run)
    cfg = TrainConfig(iterations=40, densify_start=19, densify_every=20, densify_stop=20)
    out = optimize_gaussians(init, cams, images, masks, cfg, on_step=lambda i: losses.append(i))
    assert [i.step for i in losses] == list(range(1, 41))
    first = sum(i.loss for i in losses[:10]) / 10
    last = sum(i.loss for i in losses[-10:]) / 10
    assert last < 0.85 * first, (first, last)
    assert _train_psnr(out, cams, images) > _train_psnr(init, cams, images) + 2.0
    assert len(out) != len(init)  # densification / pruning ran


def test_optimizer_is_deterministic(spot64, spot_init) -> None:
    cams, images, masks = spot64
    cfg = TrainConfig(
        iterations=12, seed=3, densify_start=2, densify_every=4, densify_stop=8, threads=1
    )
    a = optimize_gaussians(spot_init, cams, images, masks, cfg)
    # the rasteriser's thread count changes nothing (None: picked by speed as it runs)
    b = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, threads=None))
    assert len(a) == len(b) and len(a) != len(spot_init)
    for name in ("means", "scales", "quats", "opacities", "colors"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, seed=4))
    assert not torch.equal(a.means, c.means) or len(a) != len(c)


def test_mvs_window(spot64, spot_init) -> None:
    """Outside ``(mvs_start, mvs_stop]`` the photometric term adds nothing: a window that
    closes at once gives the bits of a run without the term; an open one changes the fit."""
    cams, images, masks = spot64
    cfg = TrainConfig(iterations=12, seed=1, densify_start=2, densify_every=4, densify_stop=8)
    off = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, mvs_weight=0.0))
    shut = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, mvs_stop=0))
    on = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, mvs_start=0))
    assert len(off) == len(shut) and torch.equal(off.means, shut.means)
    assert len(on) != len(off) or not torch.equal(on.means, off.means)


def test_opacity_weight_pushes_opacities_to_0_or_1(spot64, spot_init) -> None:
    cams, images, masks = spot64
    cfg = TrainConfig(iterations=30, densify_start=100, final_prune_opacity=0.0, min_contribution=0)

    def spread(g: Gaussians) -> float:
        return float((g.opacities * (1 - g.opacities)).mean())

    plain = optimize_gaussians(spot_init, cams, images, masks, cfg)
    binary = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, opacity_weight=1.0))
    assert len(plain) == len(binary) == len(spot_init)
    assert spread(binary) < 0.8 * spread(plain), (spread(binary), spread(plain))


def test_novel_camera_swings_about_the_centre() -> None:
    """Same distance to the look-at point, still looking at it, a proper rotation, tilted by
    at most the limit; from a 10-degree ring it reaches elevations well above and below."""
    cams = orbit_cameras(8, elevation_deg=10.0, radius=2.0, fov_deg=30.0, size=32)
    centre = torch.tensor([0.0, 0.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    elevations = []
    for v in range(200):
        c2w = cams.c2w[v % 8]
        new = novel_camera(c2w, centre, 45.0, gen)
        pos = new[:3, 3]
        assert abs(float(pos.norm()) - 2.0) < 1e-5
        sight = torch.nn.functional.normalize(centre - pos, dim=0)
        assert float(sight @ -new[:3, 2]) > 1 - 1e-5  # the camera looks along -z at the centre
        torch.testing.assert_close(new[:3, :3].T @ new[:3, :3], torch.eye(3), atol=1e-5, rtol=0)
        tilt = math.degrees(math.acos(min(1.0, float(new[:3, 2] @ c2w[:3, 2]))))
        assert tilt <= 45.0 + 1e-3
        elevations.append(math.degrees(math.asin(float(pos[2]) / 2.0)))
    assert min(elevations) < -20.0 and max(elevations) > 40.0


def test_novel_alpha_weight_thins_haze_the_training_views_cannot_see() -> None:
    """A flat torus seen from a ring of cameras at 0 degrees: its hole is hidden behind the
    near side of the tube in every training view, so faint haze filling the hole costs the
    training loss nothing; views from above see it against the background. With the
    novel-view term it fades; without, it stays."""
    gen = torch.Generator().manual_seed(5)
    cams = orbit_cameras(8, elevation_deg=0.0, radius=2.0, fov_deg=30.0, size=48)
    n = 3000
    u, v = torch.rand(n, generator=gen) * 2 * math.pi, torch.rand(n, generator=gen) * 2 * math.pi
    ring = 0.3 + 0.1 * v.cos()
    torus = Gaussians(
        torch.stack([ring * u.cos(), ring * u.sin(), 0.1 * v.sin()], -1),
        torch.full((n, 3), 0.02),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4).clone(),
        torch.full((n,), 0.9),
        torch.full((n, 3), 0.4),
    )
    with torch.no_grad():
        views = rasterize(torus, cams.c2w, cams.K, 48, 48, (1.0, 1.0, 1.0))
    images, masks = views.rgb.permute(0, 3, 1, 2).contiguous(), views.alpha[..., 0]
    m = 100
    angle = torch.rand(m, generator=gen) * 2 * math.pi
    radius = 0.15 * torch.rand(m, generator=gen).sqrt()
    haze = Gaussians(
        torch.stack([radius * angle.cos(), radius * angle.sin(), torch.zeros(m)], -1),
        torch.tensor([[0.01, 0.01, 1e-3]]).expand(m, 3).clone(),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(m, 4).clone(),
        torch.full((m,), 0.05),
        torch.full((m, 3), 0.4),
    )
    init = Gaussians.cat([torus, haze])
    base = TrainConfig(
        iterations=120, densify_start=1000, opacity_reset_every=0, min_contribution=0.0,
        opacity_weight=0.0, final_prune_opacity=0.0, novel_every=1, novel_scale=1.0, novel_tilt_deg=60.0,
    )  # fmt: skip
    left = {}
    for w in (0.0, 1.0):
        out = optimize_gaussians(init, cams, images, masks, replace(base, novel_alpha_weight=w))
        assert len(out) == len(init)
        left[w] = float(out.opacities[n:].mean())
    assert left[0.0] > 0.045, left  # hidden from the training views: nothing removes it
    assert left[1.0] < 0.5 * left[0.0], left


def test_mvs_weight_moves_a_lid_back_onto_a_textured_surface() -> None:
    """A grey lid of Gaussians 4 cm above a textured square: the training views (a ring at
    45 degrees) can be repainted onto the lid, so the plain loss barely moves it; the
    photometric term sees that the photos disagree about the lid and pulls it down."""
    gen = torch.Generator().manual_seed(0)
    size = 64
    cams = orbit_cameras(12, elevation_deg=45.0, radius=2.0, fov_deg=30.0, size=size)
    xs = torch.linspace(-0.3, 0.3, 50)
    x, y = torch.meshgrid(xs, xs, indexing="ij")
    n = x.numel()
    plane = Gaussians(
        torch.stack([x.flatten(), y.flatten(), torch.zeros(n)], -1),
        torch.tensor([[0.008, 0.008, 1e-4]]).expand(n, 3).clone(),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4).clone(),
        torch.full((n,), 0.95),
        torch.rand(n, 1, generator=gen).expand(n, 3).clone(),
    )
    with torch.no_grad():
        views = rasterize(plane, cams.c2w, cams.K, size, size, (1.0, 1.0, 1.0))
    images, masks = views.rgb.permute(0, 3, 1, 2).contiguous(), views.alpha[..., 0]
    lid = plane.with_(
        means=plane.means + torch.tensor([0.0, 0.0, 0.04]), colors=torch.full((n, 3), 0.5)
    )
    base = TrainConfig(
        iterations=300, densify_start=1000, opacity_reset_every=0, min_contribution=0.0,
        novel_alpha_weight=0.0, final_prune_opacity=0.0, mvs_start=0,
    )  # fmt: skip
    height = {}
    for w in (0.0, 1.0):
        out = optimize_gaussians(lid, cams, images, masks, replace(base, mvs_weight=w))
        assert len(out) == n
        height[w] = float(out.means[:, 2].abs().median())
    assert height[0.0] > 0.02, height
    assert height[1.0] < 0.5 * height[0.0], height


def test_visible_fraction() -> None:
    """A Gaussian in front of everything is fully visible (its summed blending weight equals
    its analytic footprint); one behind an opaque wall is hidden."""
    cams = load_transforms(SPOT / "transforms_train.json").resized(96, 96).subset([0])
    eye = cams.c2w[0, :3, 3]
    toward = -eye / eye.norm()
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(3, 1)
    g = Gaussians(
        means=torch.stack([eye + 1.2 * toward, eye + 1.5 * toward, eye + 0.9 * toward]),
        scales=torch.tensor([[0.2, 0.2, 0.2], [0.03, 0.03, 0.03], [0.02, 0.03, 0.04]]),
        quats=quats,
        opacities=torch.tensor([0.99, 0.5, 0.5]),
        colors=torch.full((3, 3), 0.5),
    )
    weight, fraction = view_contributions(params_from_gaussians(g), cams.c2w, cams.K, 96, 96, "cpu")
    assert weight[2] > 1.0 and abs(float(fraction[2]) - 1.0) < 0.05, fraction
    assert float(fraction[1]) < 0.02, fraction  # behind the wall
    assert float(fraction[0]) > 0.5, fraction


def test_min_visible_prunes_buried_gaussians(spot64, spot_init) -> None:
    cams, images, masks = spot64
    centre = spot_init.means.mean(0)
    n = 50
    gen = torch.Generator().manual_seed(0)
    buried = Gaussians(
        means=centre + 0.02 * torch.randn(n, 3, generator=gen),
        scales=torch.full((n, 3), 0.01),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        opacities=torch.full((n,), 0.9),
        colors=torch.full((n, 3), 0.5),
    )
    init = Gaussians(
        *(torch.cat([getattr(spot_init, k), getattr(buried, k)]) for k in
          ("means", "scales", "quats", "opacities", "colors"))
    )  # fmt: skip
    cfg = TrainConfig(
        iterations=2, densify_start=100, min_contribution=0.0, final_prune_opacity=0.0
    )
    kept = optimize_gaussians(init, cams, images, masks, cfg)
    pruned = optimize_gaussians(init, cams, images, masks, replace(cfg, min_visible=0.05))
    assert len(kept) == len(init)
    near_centre = (pruned.means - centre).norm(dim=-1) < 0.1
    assert len(pruned) < len(init) and int(near_centre.sum()) == 0
    # the surface stays (the 15 % of the initial samples inside the hull go too)
    assert len(pruned) > 0.7 * len(spot_init)


def test_flat_weight_flattens(spot64, spot_init) -> None:
    cams, images, masks = spot64
    cfg = TrainConfig(iterations=30, densify_start=100, final_prune_opacity=0.0, min_contribution=0)

    def ratio(g: Gaussians) -> float:
        return float((g.scales.min(-1).values / g.scales.max(-1).values).mean())

    plain = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, flat_weight=0.0))
    flat = optimize_gaussians(spot_init, cams, images, masks, replace(cfg, flat_weight=1.0))
    # 30 Adam steps of lr 5e-3 on the log-scales move them by at most ~0.15
    assert ratio(flat) < ratio(plain) - 0.04, (ratio(flat), ratio(plain))


def test_optimize_views_from_a_transforms_file() -> None:
    cams = load_transforms(SPOT / "transforms_train.json")
    stages = []
    r = optimize_views(
        cams, resolution=32, iterations=3, seed=1, on_stage=lambda *a: stages.append(a)
    )
    assert [h.step for h in r.history] == [1, 2, 3]
    assert set(r.timings) == {"load", "hull", "optimize"}
    assert stages[-1] == ("Optimising 3 steps", 3)
    # the spot views are already in the model frame: both frames agree
    assert torch.equal(r.model_from_user, torch.eye(4, dtype=torch.float64))
    assert torch.equal(r.gaussians.means, r.gaussians_model.means)
    assert r.hull is not None and r.hull.occupied.shape[0] <= 32


# ------------------------------------------------------------------ CLI


def test_cli_optimize_writes_model(tmp_path, capsys, monkeypatch) -> None:
    # no weights anywhere: --method optimize must not look them up
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    out = tmp_path / "out"
    args = ["--method", "optimize", "--iterations", "20", "--resolution", "64", "--no-video"]
    code, err = recon(capsys, monkeypatch, SPOT / "transforms_train.json", *args, "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.ply", "cameras.json", "model_frame.json"]
    )
    assert "optimised 20 steps" in err
    g = load_ply(out / "model.ply").gaussians
    assert len(g) > 1000
    # it looks like Spot from a training camera
    cams = load_transforms(SPOT / "transforms_train.json")
    images, used = load_views(cams, 64)
    blank = Gaussians(*(t[:0] for t in (g.means, g.scales, g.quats, g.opacities, g.colors)))
    views = used.subset([0, 10]), images[[0, 10]]
    assert _train_psnr(g, *views) > _train_psnr(blank, *views) + 4.0


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--method", "optimize", "--refine", "5"], "--refine only apply to --method geolrm"),
        (["--method", "optimize", "--checkpoint", "w.safetensors"], "--checkpoint only apply"),
        (["--iterations", "5"], "--iterations applies to --method optimize"),
    ],
)
def test_cli_option_mix_errors(tmp_path, capsys, monkeypatch, extra, match) -> None:
    out = tmp_path / "out"
    code, err = recon(capsys, monkeypatch, SPOT / "transforms_train.json", *extra, "-o", out)
    one_error(code, err, match)
    assert not out.exists()


def test_cli_optimize_needs_alpha(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    code, err = recon(
        capsys, monkeypatch, TINY_VIEWS, "--method", "optimize", "--iterations", "2", "-o", out
    )
    one_error(code, err, "no alpha channel")
    assert not out.exists() or not any(out.iterdir())


def test_refine_lowers_the_loss(tmp_path, capsys, monkeypatch) -> None:
    from pipelines.optimize import refine_result
    from pipelines.reconstruct import load_model, reconstruct, resolve_inputs

    cams = resolve_inputs(TINY_VIEWS)
    model = load_model(
        FIXTURE / "geolrm_tiny_weights.safetensors",
        ROOT / "examples" / "tiny" / "geolrm_tiny_config.json",
    )
    base = reconstruct(cams, model, size=112)
    steps = []
    refined = refine_result(base, cams, 30, resolution=56, seed=0, on_step=steps.append)
    assert len(steps) == 30
    first = sum(s.loss for s in steps[:3]) / 3
    last = sum(s.loss for s in steps[-3:]) / 3
    assert last < first, (first, last)
    assert refined.geolrm.anchors is base.geolrm.anchors
    assert not torch.equal(refined.gaussians.means[:10], base.gaussians.means[:10])
    # and through the command line
    out = tmp_path / "out"
    args = [*TINY, "--refine", "3", "--resolution", "56", "--no-video", "-o", out]
    code, err = recon(capsys, monkeypatch, TINY_VIEWS, *args)
    assert code == 0, err
    assert "refined 3 steps" in err
    assert (out / "model.ply").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_optimizer_on_cuda(spot64, spot_init) -> None:
    """gsplat path: the loss falls and densification sees gsplat's screen-space gradients."""
    cams, images, masks = spot64
    init = spot_init
    losses = []
    cfg = TrainConfig(iterations=40, densify_start=19, densify_every=20, densify_stop=20)
    out = optimize_gaussians(
        init, cams, images, masks, cfg, on_step=lambda i: losses.append(i), device="cuda"
    )
    assert sum(i.loss for i in losses[-10:]) < 0.85 * sum(i.loss for i in losses[:10])
    assert len(out) != len(init) and out.means.device.type == "cpu"


def _training_render(spot64, spot_init, dev: str, backend: str) -> list[torch.Tensor]:
    """rgb, alpha, depth of the trainer's render (``rasterize(..., with_meta=True)``) of two
    views (one on a coloured background) and the gradient of ``sum(depth * alpha)`` w.r.t. the
    means."""
    cams, _, _ = spot64
    idx = torch.tensor([0, 7])
    g = spot_init.to(dev)
    means = g.means.clone().requires_grad_(True)
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.4, 0.6]], device=dev)
    c2w, K = cams.c2w[idx].to(dev), cams.K[idx].to(dev)
    out = rasterize(g.with_(means=means), c2w, K, 64, 64, bg, backend=backend, with_meta=True)
    rgb, alpha, depth = out.rgb, out.alpha, out.depth
    (depth * alpha).sum().backward()
    return [t.detach().cpu() for t in (rgb, alpha, depth, means.grad)]


def _same_training_render(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    (rgb_a, a_a, d_a, g_a), (rgb_b, a_b, d_b, g_b) = a, b
    mse = float(((rgb_a - rgb_b) ** 2).mean())
    assert -10 * math.log10(max(mse, 1e-12)) > 40.0
    solid = (a_a > 0.5) & (a_b > 0.5)
    assert int(solid.sum()) > 500
    assert float((d_a - d_b)[solid].abs().mean()) < 1e-3
    cos = torch.nn.functional.cosine_similarity(g_a.flatten(), g_b.flatten(), dim=0)
    assert float(cos) > 0.99


def test_training_render_cpu_matches_reference(spot64, spot_init) -> None:
    """The trainer's render (colour on the background, expected depth for the photometric
    term, gradients) is the same on the numba rasteriser and the pure-torch reference."""
    cpu = _training_render(spot64, spot_init, "cpu", "cpu")
    _same_training_render(cpu, _training_render(spot64, spot_init, "cpu", "reference"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_render_on_gsplat_matches_cpu(spot64, spot_init) -> None:
    """Same on gsplat (its RGB+ED mode, the background composited by the trainer)."""
    cpu = _training_render(spot64, spot_init, "cpu", "cpu")
    _same_training_render(cpu, _training_render(spot64, spot_init, "cuda", "gsplat"))
