"""Tests of the Gaussian-splat rasterizer (pipelines.raster)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.errors import InputError
from pipelines.raster import RenderOutput, rasterize, render_with, resolve_backend
from pipelines.raster.cpu import project_cpu
from pipelines.raster.project import project, viewmats_from_c2w
from pipelines.raster.reference import brute_force, rasterize_reference
from pipelines.splats.gaussians import Gaussians

W, H = 64, 48


# ----------------------------------------------------------------------------- helpers
def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), dtype=torch.float32) -> torch.Tensor:
    """OpenGL camera-to-world ``[4, 4]`` at ``eye`` looking at ``target``."""
    eye = torch.tensor(eye, dtype=torch.float64)
    fwd = torch.tensor(target, dtype=torch.float64) - eye
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.tensor(up, dtype=torch.float64))
    right = right / right.norm()
    true_up = torch.linalg.cross(right, fwd)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, true_up, -fwd, eye
    return m.to(dtype)


def intrinsics(fx, fy, cx, cy, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def two_cameras(dtype=torch.float32):
    """Two 64x48 cameras with different, non-centred intrinsics."""
    c2w = torch.stack(
        [look_at((0.3, 0.4, 2.2), dtype=dtype), look_at((-2.0, 0.6, 0.8), dtype=dtype)]
    )
    K = torch.stack(
        [intrinsics(62.0, 58.0, 29.3, 21.7, dtype), intrinsics(50.0, 52.0, 35.1, 26.4, dtype)]
    )
    return c2w, K


def random_scene(
    n: int, seed: int, sh_degree: int = 0, dtype=torch.float32, n_opaque: int = 0
) -> Gaussians:
    """Random Gaussians around the origin, with deliberately awkward members appended:
    behind camera 0, far outside the view, very large, tiny, nearly transparent, clamped at
    alpha 0.99. ``n_opaque`` of the random ones are large and nearly opaque, so that many
    pixels hit the early-termination rule."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * 1.6
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.15), generator=gen))
    quats = torch.randn(n, 4, generator=gen)
    opac = torch.rand(n, generator=gen) * 0.97 + 0.02
    if n_opaque:
        means[:n_opaque] *= 0.3
        scales[:n_opaque] = 0.15 + 0.25 * torch.rand(n_opaque, 3, generator=gen)
        opac[:n_opaque] = 0.6 + 0.399 * torch.rand(n_opaque, generator=gen)
    colors = torch.rand(n, 3, generator=gen)
    special_means = torch.tensor(
        [
            [0.3, 0.4, 3.0],  # behind camera 0 (at z = 2.2 looking at -z)
            [0.3, 0.4, 2.195],  # just in front of camera 0, inside the near plane
            [25.0, 0.0, 0.0],  # far outside both views
            [3.0, 0.0, 0.0],  # outside the view but large enough to spill in
            [0.0, 0.0, 0.0],  # very large
            [0.1, -0.1, 0.2],  # tiny
            [-0.2, 0.1, 0.1],  # nearly transparent
            [0.05, 0.02, -0.3],  # flat and elongated
            [-0.1, -0.2, 0.3],  # alpha clamped at 0.99 near its centre
        ]
    )
    special_scales = torch.tensor(
        [
            [0.2, 0.2, 0.2],
            [0.05, 0.05, 0.05],
            [0.5, 0.5, 0.5],
            [1.2, 0.8, 1.0],
            [1.5, 1.0, 2.0],
            [1e-4, 2e-4, 1e-4],
            [0.3, 0.3, 0.3],
            [0.6, 0.004, 0.02],
            [0.08, 0.08, 0.08],
        ]
    )
    k = len(special_means)
    special_quats = torch.randn(k, 4, generator=gen)
    special_opac = torch.tensor([0.9, 0.8, 0.9, 0.7, 0.35, 0.95, 0.005, 0.9, 0.999])
    special_colors = torch.rand(k, 3, generator=gen)
    sh_rest = None
    if sh_degree > 0:
        sh_rest = 0.3 * torch.randn(n + k, (sh_degree + 1) ** 2 - 1, 3, generator=gen)
    g = Gaussians(
        torch.cat([means, special_means]),
        torch.cat([scales, special_scales]),
        torch.cat([quats, special_quats]),
        torch.cat([opac, special_opac]),
        torch.cat([colors, special_colors]),
        sh_rest,
    )
    return g.to(dtype)


def object_scene(n: int, seed: int) -> Gaussians:
    """Object-like shell of small Gaussians (the bench's scene, smaller)."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    means = dirs * (0.35 + 0.1 * torch.rand(n, 1, generator=gen))
    scales = torch.exp(math.log(0.002) + torch.rand(n, 3, generator=gen) * math.log(10.0))
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    opac = torch.rand(n, generator=gen) * 0.95 + 0.02
    colors = torch.rand(n, 3, generator=gen)
    return Gaussians(means, scales, quats, opac, colors)


def brute(g: Gaussians, c2w, K, width, height, background=None) -> RenderOutput:
    bg = torch.zeros(c2w.shape[0], 3) if background is None else torch.as_tensor(background)
    bg = bg.to(g.means).expand(c2w.shape[0], 3)
    return render_with(brute_force, g, c2w, K, width, height, bg)


def max_abs(a: RenderOutput, b: RenderOutput) -> dict[str, float]:
    return {
        k: float((getattr(a, k) - getattr(b, k)).abs().max()) for k in ("rgb", "alpha", "depth")
    }


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


# ----------------------------------------------------------------------------- 1. vs brute force
@pytest.mark.parametrize(
    "seed, sh_degree, background, n_opaque",
    [
        (0, 0, None, 0),
        (1, 0, (0.2, 0.5, 0.9), 0),
        (2, 1, None, 60),
        (3, 2, (1.0, 1.0, 1.0), 0),
        (4, 3, "per-cam", 60),
    ],
)
def test_fast_path_matches_brute_force(seed, sh_degree, background, n_opaque):
    g = random_scene(300, seed, sh_degree, n_opaque=n_opaque)
    c2w, K = two_cameras()
    if background == "per-cam":
        background = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    fast = rasterize(g, c2w, K, W, H, background, backend="cpu")
    ref = brute(g, c2w, K, W, H, background)
    assert fast.rgb.shape == (2, H, W, 3)
    assert fast.alpha.shape == fast.depth.shape == (2, H, W, 1)
    err = max_abs(fast, ref)
    assert max(err.values()) <= 1e-4, err
    # the scene is non-trivial: partly covered; the opaque ones terminate many pixels early
    assert 0.2 < float(fast.alpha.mean()) < 0.9999
    assert float(fast.depth.max()) > 0
    if n_opaque:
        assert float((fast.alpha > 1 - 2e-4).float().mean()) > 0.1


def test_brute_force_and_tiled_reference_agree():
    g = random_scene(120, 7, 1)
    c2w, K = two_cameras()
    ref = rasterize(g, c2w, K, W, H, (0.3, 0.3, 0.3), backend="reference")
    bf = brute(g, c2w, K, W, H, (0.3, 0.3, 0.3))
    assert max(max_abs(ref, bf).values()) <= 1e-5


def test_projection_fused_is_bit_identical_to_torch():
    g = random_scene(400, 5)
    c2w, K = two_cameras()
    vm = viewmats_from_c2w(c2w.double()).float()
    a = project(g.means, g.quats, g.scales, g.opacities, vm, K, W, H)
    b = project_cpu(g.means, g.quats, g.scales, g.opacities, vm, K, W, H)
    for name in ("means2d", "conics", "depths", "valid"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.radii, b.radii, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 2. realistic size
def test_fast_path_matches_reference_realistic_scene():
    g = object_scene(20_000, 11)
    c2w = look_at((0.9, 0.6, 1.1))[None]
    f = 0.5 * 256 / math.tan(math.radians(39.6) / 2)
    K = intrinsics(f, f * 1.01, 131.0, 124.5)[None]
    with torch.no_grad():
        fast = rasterize(g, c2w, K, 256, 256, (1.0, 1.0, 1.0), backend="cpu")
        ref = rasterize(g, c2w, K, 256, 256, (1.0, 1.0, 1.0), backend="reference")
    assert psnr(fast.rgb, ref.rgb) >= 40.0
    assert psnr(fast.alpha, ref.alpha) >= 40.0
    covered = ref.alpha > 0.5
    assert covered.float().mean() > 0.2
    assert float((fast.depth - ref.depth)[covered].abs().max()) < 1e-3


# ----------------------------------------------------------------------------- 3. vs gsplat
def test_projection_matches_gsplat_torch_impl():
    pytest.importorskip("gsplat")
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    g = random_scene(500, 9)
    c2w, K = two_cameras()
    vm = viewmats_from_c2w(c2w.double()).float()
    ours = project(g.means, g.quats, g.scales, g.opacities, vm, K, W, H)
    covars, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g.means, covars, vm, K, W, H, eps2d=0.3, near_plane=0.01, far_plane=1e4
    )
    v = ours.valid
    assert v.sum() > 600
    torch.testing.assert_close(ours.means2d[v], means2d[v], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.conics[v], conics[v], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.depths, depths, rtol=1e-6, atol=1e-6)
    # our opacity-aware boxes are tighter than gsplat's 3.33-sigma ones: whatever we keep on
    # screen, gsplat keeps too, and our half extents never exceed its radii (+1 px of slack)
    ours_keep = (ours.radii > 0).all(-1)
    assert bool(((radii > 0).all(-1) | ~ours_keep).all())
    assert bool((ours.radii[ours_keep] <= radii[ours_keep] + 1.0).all())
    assert (ours_keep.sum() / (radii > 0).all(-1).sum()) > 0.8


def _stand_in_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, kw):
    """What ``gsplat.rasterization`` computes, from our reference maths: ``(RGB + expected
    depth [C,H,W,4], alpha [C,H,W,1], the projection)``."""
    proj = project(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        kw["near_plane"], kw["far_plane"],
    )  # fmt: skip
    feats = torch.cat([colors, proj.depths[..., None]], -1)
    acc, alpha = rasterize_reference(proj, feats, opacities, width, height)
    return torch.cat([acc[..., :3], acc[..., 3:] / alpha.clamp(min=1e-10)], -1), alpha, proj


def test_gsplat_backend_glue_with_a_stand_in_gsplat(monkeypatch):
    """The CUDA backend's argument plumbing (camera convention, per-camera colours,
    background, depth) checked on the CPU: a stand-in ``gsplat.rasterization`` built from our
    own reference math receives exactly what gsplat would."""
    import sys
    import types

    from pipelines.raster.cuda import rasterize_gsplat

    seen = {}

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
        seen.update(kw, colors=colors, viewmats=viewmats)
        assert kw["render_mode"] == "RGB+ED" and kw["sh_degree"] is None
        assert kw["eps2d"] == 0.3 and kw["radius_clip"] == 0.0
        # gsplat 1.5.3's packed mode (its default) asserts backgrounds of shape [channels]:
        # [C, channels] fails there, so the backend must composite the background itself
        assert kw.get("backgrounds") is None or not kw.get("packed", True)
        render, alpha, _ = _stand_in_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, kw
        )
        return render, alpha, {}

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=rasterization))
    g = random_scene(100, 12, sh_degree=1)
    c2w, K = two_cameras()
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    out = rasterize_gsplat(g, c2w, K, W, H, bg, 0.01, 1e4)
    assert seen["colors"].shape == (2, len(g), 3)
    torch.testing.assert_close(seen["viewmats"], viewmats_from_c2w(c2w.double()).float())
    ref = rasterize(g, c2w, K, W, H, bg, backend="cpu")
    assert max(max_abs(out, ref).values()) <= 1e-4


# ----------------------------------------------------------------------------- 4. gradients
def _tiny_scene(dtype):
    means = torch.tensor([[0.05, 0.02, 0.0], [-0.12, 0.06, -0.2], [0.1, -0.1, 0.15]], dtype=dtype)
    scales = torch.tensor([[0.05, 0.08, 0.03], [0.1, 0.06, 0.08], [0.04, 0.04, 0.09]], dtype=dtype)
    quats = torch.tensor(
        [[0.9, 0.1, -0.2, 0.3], [0.4, -0.5, 0.2, 0.7], [1.0, 0.0, 0.3, -0.1]], dtype=dtype
    )
    opac = torch.tensor([0.7, 0.55, 0.8], dtype=dtype)
    colors = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=dtype)
    c2w = torch.stack(
        [look_at((0.2, 0.3, 1.2), dtype=dtype), look_at((-0.9, 0.2, 0.8), dtype=dtype)]
    )
    K = torch.stack(
        [intrinsics(30.0, 28.0, 8.3, 7.6, dtype), intrinsics(26.0, 27.0, 7.5, 8.8, dtype)]
    )
    return (means, scales, quats, opac, colors), c2w, K


def test_fast_path_gradcheck_float64():
    params, c2w, K = _tiny_scene(torch.float64)
    params = [p.clone().requires_grad_(True) for p in params]
    gen = torch.Generator().manual_seed(0)
    w_rgb = torch.rand(2, 16, 16, 3, generator=gen, dtype=torch.float64)
    w_a = torch.rand(2, 16, 16, 1, generator=gen, dtype=torch.float64)
    w_d = torch.rand(2, 16, 16, 1, generator=gen, dtype=torch.float64)

    def loss(means, scales, quats, opac, colors):
        out = rasterize(
            Gaussians(means, scales, quats, opac, colors),
            c2w,
            K,
            16,
            16,
            (0.3, 0.2, 0.1),
            backend="cpu",
        )
        return (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum() + (out.depth * w_d).sum()

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sh_degree, n_opaque", [(0, 0), (2, 0), (0, 25)])
def test_fast_path_gradients_match_reference_autograd(sh_degree, n_opaque):
    g = random_scene(60, 21, sh_degree, n_opaque=n_opaque)
    c2w, K = two_cameras()
    names = ["means", "scales", "quats", "opacities", "colors"] + (["sh_rest"] if sh_degree else [])
    gen = torch.Generator().manual_seed(1)
    w_rgb = torch.rand(2, H, W, 3, generator=gen)
    w_a = torch.rand(2, H, W, 1, generator=gen)
    w_d = torch.rand(2, H, W, 1, generator=gen)
    grads = {}
    for backend in ("cpu", "reference"):
        params = {k: getattr(g, k).clone().requires_grad_(True) for k in names}
        out = rasterize(g.with_(**params), c2w, K, W, H, (0.5, 0.4, 0.3), backend=backend)
        loss = (out.rgb * w_rgb).sum() + (out.alpha * w_a).sum() + (out.depth * w_d).sum()
        loss.backward()
        grads[backend] = {k: p.grad for k, p in params.items()}
    for k in names:
        a, b = grads["cpu"][k], grads["reference"][k]
        assert float(b.abs().max()) > 0, k
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()), msg=k)


def test_background_gradient_and_no_grad_leak():
    g = random_scene(50, 3)
    c2w, K = two_cameras()
    bg = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)
    out = rasterize(g, c2w, K, W, H, bg, backend="cpu")
    out.rgb.sum().backward()
    expected = (1.0 - out.alpha.detach()).sum() * torch.ones(3)
    torch.testing.assert_close(bg.grad, expected, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------- 5. convention
def test_gaussian_lands_where_the_pinhole_model_says():
    c2w = look_at((0.4, -0.3, 2.0), target=(0.1, 0.2, 0.0), up=(0.2, 1.0, 0.1))
    fx, fy, cx, cy = 70.0, 64.0, 27.5, 21.0
    K = intrinsics(fx, fy, cx, cy)
    point = torch.tensor([0.15, 0.05, 0.1])
    # OpenGL camera coordinates: x right, y up, camera looking down -z
    p_cam = (
        torch.linalg.inv(c2w.double())[:3, :3] @ point.double()
        + torch.linalg.inv(c2w.double())[:3, 3]
    )
    z = -p_cam[2]
    u = cx + fx * p_cam[0] / z
    v = cy - fy * p_cam[1] / z
    g = Gaussians(
        point[None],
        torch.full((1, 3), 0.02),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.tensor([0.9]),
        torch.ones(1, 3),
    )
    vm = viewmats_from_c2w(c2w[None].double()).float()
    proj = project(g.means, g.quats, g.scales, g.opacities, vm, K[None], W, H)
    assert abs(float(proj.means2d[0, 0, 0]) - float(u)) < 1e-3
    assert abs(float(proj.means2d[0, 0, 1]) - float(v)) < 1e-3
    assert abs(float(proj.depths[0, 0]) - float(z)) < 1e-5
    for backend in ("cpu", "reference"):
        out = rasterize(g, c2w[None], K[None], W, H, backend=backend)
        a = out.alpha[0, :, :, 0].double()
        ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        cu, cv = float((a * xs).sum() / a.sum()), float((a * ys).sum() / a.sum())
        assert abs(cu - float(u)) < 0.05 and abs(cv - float(v)) < 0.05, (backend, cu, cv, u, v)
        peak = int(torch.argmax(a))
        assert (peak % W, peak // W) == (int(u), int(v))
        torch.testing.assert_close(
            out.depth[0, int(v), int(u), 0].double(), z, rtol=1e-4, atol=1e-4
        )


# ----------------------------------------------------------------------------- 6. API
def test_auto_backend_on_cpu_is_the_fast_path():
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    g = random_scene(80, 4)
    c2w, K = two_cameras()
    auto = rasterize(g, c2w, K, W, H, (0.1, 0.2, 0.3))
    fast = rasterize(g, c2w, K, W, H, (0.1, 0.2, 0.3), backend="cpu")
    for k in ("rgb", "alpha", "depth"):
        assert torch.equal(getattr(auto, k), getattr(fast, k))


def test_background_handling():
    g = object_scene(300, 6)  # small Gaussians: some pixels stay empty
    c2w, K = two_cameras()
    black = rasterize(g, c2w, K, W, H)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    col = rasterize(g, c2w, K, W, H, bg)
    expected = black.rgb + (1 - black.alpha) * bg[:, None, None, :]
    torch.testing.assert_close(col.rgb, expected, rtol=0, atol=1e-6)
    tup = rasterize(g, c2w, K, W, H, (0.1, 0.2, 0.3))
    torch.testing.assert_close(
        tup.rgb, black.rgb + (1 - black.alpha) * torch.tensor([0.1, 0.2, 0.3]), rtol=0, atol=1e-6
    )
    empty_px = black.alpha[..., 0] == 0
    assert empty_px.any()
    assert bool((col.rgb[empty_px.nonzero(as_tuple=True)] == bg[empty_px.nonzero()[:, 0]]).all())
    assert bool((black.depth[empty_px] == 0).all())
    with pytest.raises(InputError):
        rasterize(g, c2w, K, W, H, torch.zeros(3, 3))


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_empty_gaussians_render_background(backend):
    c2w, K = two_cameras()
    empty = random_scene(10, 0)[:0]
    out = rasterize(empty, c2w, K, W, H, (0.25, 0.5, 0.75), backend=backend)
    assert out.rgb.shape == (2, H, W, 3)
    assert bool((out.rgb == torch.tensor([0.25, 0.5, 0.75])).all())
    assert bool((out.alpha == 0).all()) and bool((out.depth == 0).all())


def test_all_culled_renders_background():
    g = random_scene(30, 2)
    g = g.with_(means=g.means + torch.tensor([0.0, 0.0, 50.0]))  # all behind both cameras? no:
    c2w = look_at((0.0, 0.0, 2.0))[None]  # looking at -z; everything is at z ~ 50, behind
    K = intrinsics(60.0, 60.0, 32.0, 24.0)[None]
    out = rasterize(g, c2w, K, W, H, (0.5, 0.5, 0.5), backend="cpu")
    assert bool((out.alpha == 0).all()) and bool((out.rgb == 0.5).all())


def test_bad_arguments():
    g = random_scene(10, 0)
    c2w, K = two_cameras()
    with pytest.raises(InputError):
        rasterize(g, c2w, K, W, H, backend="vulkan")
    with pytest.raises(InputError):
        rasterize(g, c2w, K[:1], W, H)
    with pytest.raises(InputError):
        rasterize(g, c2w, K, W, H, backend="gsplat")  # gsplat needs CUDA tensors
    with pytest.raises(InputError):
        rasterize(g[:0], c2w, K, W, H, backend="gsplat")


def test_single_camera_unbatched_and_non_square_non_tile_multiple():
    g = random_scene(150, 8)
    c2w, K = two_cameras()
    out = rasterize(g, c2w[0], K[0], 37, 29, backend="cpu")
    ref = brute(g, c2w[:1], K[:1], 37, 29)
    assert out.rgb.shape == (1, 29, 37, 3)
    assert max(max_abs(out, ref).values()) <= 1e-4


def test_numba_cache_fallback(numba_without_cache):
    """No writable cache dir: the kernels (raster, TSDF, texture) compile per process."""
    from pipelines.numba_jit import cached_njit

    calls = numba_without_cache

    @cached_njit()
    def add(a, b):
        return a + b

    # the decoration's calls, before the first compile (whose own njit calls inside numba
    # depend on what compiled earlier in the process)
    assert calls == [True, False]
    assert add(np.int64(2), np.int64(3)) == 5


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_fast_path_gradients_match_reference_larger_scene():
    g = object_scene(3000, 5)
    c2w = torch.stack([look_at((0.9, 0.6, 1.1)), look_at((-1.2, 0.2, 0.7))])
    K = torch.stack([intrinsics(150.0, 150.0, 48.0, 40.0)] * 2)
    grads = {}
    for backend in ("cpu", "reference"):
        params = {
            k: getattr(g, k).clone().requires_grad_(True)
            for k in ("means", "scales", "opacities", "colors")
        }
        out = rasterize(g.with_(**params), c2w, K, 96, 80, (1.0, 1.0, 1.0), backend=backend)
        (out.rgb.sum() + out.depth.mean()).backward()
        grads[backend] = {k: p.grad for k, p in params.items()}
    for k, b in grads["reference"].items():
        torch.testing.assert_close(
            grads["cpu"][k], b, rtol=1e-3, atol=2e-3 * float(b.abs().max()), msg=k
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gsplat_matches_cpu_backend_forward_and_gradients():
    """The real gsplat kernels against our CPU fast path: same image, same gradients (up to
    gsplat's documented differences: 0.999 alpha clamp, 3.33-sigma tile boxes)."""
    pytest.importorskip("gsplat")
    g = object_scene(20_000, 11)
    c2w = torch.stack([look_at((0.9, 0.6, 1.1)), look_at((-1.2, 0.2, 0.7))])
    f = 0.5 * 256 / math.tan(math.radians(39.6) / 2)
    K = torch.stack([intrinsics(f, f * 1.01, 131.0, 124.5)] * 2)
    gen = torch.Generator().manual_seed(3)
    w_rgb = torch.rand(2, 256, 256, 3, generator=gen)
    names = ("means", "scales", "quats", "opacities", "colors")
    outs, grads = {}, {}
    for backend, dev in (("cpu", "cpu"), ("gsplat", "cuda")):
        params = {k: getattr(g, k).to(dev).clone().requires_grad_(True) for k in names}
        out = rasterize(
            g.with_(**params), c2w.to(dev), K.to(dev), 256, 256, (1.0, 1.0, 1.0), backend=backend
        )
        ((out.rgb * w_rgb.to(dev)).sum() + out.depth.mean()).backward()
        outs[backend] = {k: getattr(out, k).detach().cpu() for k in ("rgb", "alpha", "depth")}
        grads[backend] = {k: p.grad.cpu() for k, p in params.items()}
    assert psnr(outs["gsplat"]["rgb"], outs["cpu"]["rgb"]) >= 40.0
    assert psnr(outs["gsplat"]["alpha"], outs["cpu"]["alpha"]) >= 40.0
    covered = outs["cpu"]["alpha"] > 0.5
    assert covered.float().mean() > 0.2
    assert float((outs["gsplat"]["depth"] - outs["cpu"]["depth"])[covered].abs().median()) < 1e-3
    for k in names:
        a, b = grads["gsplat"][k].flatten(), grads["cpu"][k].flatten()
        cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        assert cos > 0.99, (k, cos)


# ----------------------------------------------------------------------------- 5. meta
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_meta_off_is_none_and_leaves_the_images_unchanged(backend):
    g = random_scene(150, 21, sh_degree=1)
    c2w, K = two_cameras()
    plain = rasterize(g, c2w, K, W, H, (0.2, 0.3, 0.4), backend=backend)
    assert plain.meta is None
    with_meta = rasterize(g, c2w, K, W, H, (0.2, 0.3, 0.4), backend=backend, with_meta=True)
    for name in ("rgb", "alpha", "depth"):
        assert torch.equal(getattr(plain, name), getattr(with_meta, name)), name
    meta = with_meta.meta
    n = len(g)
    assert meta.means2d.shape == (2, n, 2) and meta.radii.shape == (2, n, 2)
    assert meta.depths.shape == (2, n) and meta.visible.shape == (2, n)
    assert torch.equal(meta.visible, (meta.radii > 0).all(-1))
    assert 0 < int(meta.visible.sum()) < 2 * n  # some Gaussians are culled (see random_scene)


def test_meta_agrees_between_cpu_and_reference():
    g = random_scene(300, 22)
    c2w, K = two_cameras()
    cpu = rasterize(g, c2w, K, W, H, backend="cpu", with_meta=True).meta
    ref = rasterize(g, c2w, K, W, H, backend="reference", with_meta=True).meta
    assert torch.equal(cpu.means2d, ref.means2d)  # the fused projection is a bit-exact twin
    assert torch.equal(cpu.depths, ref.depths)
    torch.testing.assert_close(cpu.radii, ref.radii, rtol=1e-5, atol=1e-5)
    assert torch.equal(cpu.visible, ref.visible)
    # the meta is the backends' own projection
    vm = viewmats_from_c2w(c2w.double()).float()
    proj = project(g.means, g.quats, g.scales, g.opacities, vm, K, W, H)
    assert torch.equal(ref.means2d, proj.means2d) and torch.equal(ref.radii, proj.radii)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_meta_means2d_receives_the_gradient(backend):
    """``meta.means2d.grad`` after backward is d loss / d means2d (what densification reads):
    present, non-zero for many Gaussians and for none off screen; the means get theirs too."""
    g = random_scene(120, 23)
    c2w, K = two_cameras()
    means = g.means.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(1)
    w_rgb = torch.rand(2, H, W, 3, generator=gen)
    out = rasterize(g.with_(means=means), c2w, K, W, H, backend=backend, with_meta=True)
    (out.rgb * w_rgb).sum().backward()
    grad = out.meta.means2d.grad
    assert grad is not None and grad.shape == (2, len(g), 2)
    moved = grad.abs().sum(-1) > 0
    assert int(moved.sum()) > 50
    assert not bool((moved & ~out.meta.visible).any())  # off-screen Gaussians get nothing
    assert means.grad is not None and float(means.grad.abs().sum()) > 0


def test_meta_of_empty_gaussians():
    c2w, K = two_cameras()
    out = rasterize(random_scene(10, 0)[:0], c2w, K, W, H, backend="cpu", with_meta=True)
    assert out.meta.means2d.shape == (2, 0, 2) and out.meta.visible.shape == (2, 0)


def test_gsplat_meta_with_a_stand_in_gsplat(monkeypatch):
    """With ``with_meta`` the CUDA backend asks gsplat for unpacked output ([C, N] per-camera
    arrays) and builds the meta from gsplat's ``info`` (its means2d keeps the gradient)."""
    import sys
    import types

    from pipelines.raster.cuda import rasterize_gsplat

    seen = {}

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
        seen.update(kw)
        render, alpha, proj = _stand_in_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, kw
        )
        radii = torch.ceil(proj.radii).int()  # gsplat 1.5: [C, N, 2] int32
        return render, alpha, {"means2d": proj.means2d, "radii": radii, "depths": proj.depths}

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=rasterization))
    g = random_scene(100, 24)
    c2w, K = two_cameras()
    bg = torch.ones(2, 3)
    means = g.means.clone().requires_grad_(True)
    out = rasterize_gsplat(g.with_(means=means), c2w, K, W, H, bg, 0.01, 1e4, with_meta=True)
    assert seen["packed"] is False
    assert out.meta.radii.dtype == torch.float32 and out.meta.radii.shape == (2, len(g), 2)
    out.rgb.sum().backward()
    assert out.meta.means2d.grad is not None
    ref = rasterize(g, c2w, K, W, H, bg, backend="cpu", with_meta=True)
    assert torch.equal(out.meta.visible, ref.meta.visible)
    plain = rasterize_gsplat(g, c2w, K, W, H, bg, 0.01, 1e4)
    assert plain.meta is None and seen["packed"] is True
