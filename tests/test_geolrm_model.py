"""GeoLRM model: golden fixture of the official code, state-dict compatibility, loader errors.

The fixture (tests/fixtures/geolrm_tiny, see SOURCE.md) is the official implementation run on
CPU in fp32 with a tiny config; every float is checked to 1e-5, integers and anchors exactly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pipelines.errors import InputError, MissingWeightsError
from pipelines.geolrm import GeoLRM, convert_checkpoint
from pipelines.geolrm.checkpoint import TRAINING_ONLY_PREFIXES, read_state_dict
from pipelines.geolrm.dinov2_keys import (
    dinov2_key_to_installed,
    dinov2_key_to_new,
    dinov2_key_to_official,
)
from pipelines.geolrm.model import (
    SelfAttention,
    _deformable_sample_torch,
    deformable_sample,
    interpolate_pos_embed_4341,
    normalize_images,
    project_points,
    projection_matrices,
    ray_embedding,
    rope3d,
    select_anchors,
    xyz_to_index,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURE = Path(__file__).parent / "fixtures" / "geolrm_tiny"
WEIGHTS = FIXTURE / "geolrm_tiny_weights.safetensors"
ATOL = 1e-5


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "geolrm_tiny_fixture.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "geolrm_tiny_golden.safetensors"))


@pytest.fixture(scope="module")
def model(meta) -> GeoLRM:
    return GeoLRM.from_pretrained(WEIGHTS, config=meta["tiny_config"], max_seq_len=1280)


@pytest.fixture(scope="module")
def inputs(golden):
    return golden["inputs.images"], golden["inputs.c2ws"], golden["inputs.Ks"]


@pytest.fixture(scope="module")
def run(model, inputs):
    """Full pipeline, capturing layer-0 attention outputs of both stages with hooks."""
    captured: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(_module, _args, output):
            captured.setdefault(name, output.detach().clone())

        return hook

    handles = []
    for stage in ("serializer", "lrm_generator"):
        layer0 = getattr(model, stage).transformer.layers[0]
        handles.append(layer0.self_attention.register_forward_hook(grab(f"{stage}.sa")))
        handles.append(layer0.cross_attention.register_forward_hook(grab(f"{stage}.ca")))
        handles.append(
            getattr(model, stage).transformer.register_forward_hook(grab(f"{stage}.out"))
        )
    try:
        out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, atol: float = ATOL):
    assert tuple(actual.shape) == tuple(expected.shape), name
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{name}: max abs diff {diff:.3g} > {atol}"


# ------------------------------------------------------------------ golden: encoders


def test_ray_embedding_golden(golden, inputs, meta):
    _, c2ws, Ks = inputs
    idx = meta["ray_embedding_sub_pixel_indices"]
    rays = ray_embedding(c2ws[0], Ks[0], 112, 112)[:, :, idx][:, :, :, idx]
    assert_close(rays, golden["ray_embedding_sub"], "ray_embedding_sub")


@pytest.mark.parametrize("stage", ["serializer", "lrm_generator"])
def test_encoder_golden(model, golden, inputs, stage):
    images, c2ws, Ks = inputs
    enc = getattr(model, stage).encoder
    with torch.inference_mode():
        fmap = enc.dino_feature_map(normalize_images(images[0]))
        feats = enc(images, c2ws, Ks)
    assert_close(fmap, golden[f"{stage}.encoder.dino_feature_map"], "dino_feature_map")
    assert_close(feats.feats, golden[f"{stage}.encoder.image_feats"], "image_feats")
    assert torch.equal(feats.spatial_shapes_tensor, golden[f"{stage}.encoder.spatial_shapes"])
    assert torch.equal(feats.level_start_index, golden["serializer.level_start_index"])


# ------------------------------------------------------------------ golden: proposal network


def test_proposal_golden(run, golden, meta):
    out, cap = run
    n = meta["anchor_count"]
    coarse = torch.linspace(-1, 1, 8) * 0.5
    grid = torch.stack(torch.meshgrid(coarse, coarse, coarse, indexing="ij"), -1).reshape(1, -1, 3)
    assert torch.equal(xyz_to_index(grid, 0.5, 32), golden["serializer.xyzs_idx"])
    assert_close(cap["serializer.sa"], golden["serializer.layer0.self_attention_out"], "sa")
    assert_close(cap["serializer.ca"], golden["serializer.layer0.cross_attention_out"], "ca")
    assert_close(cap["serializer.out"], golden["serializer.transformer_out"], "transformer_out")
    assert_close(out.occupancy_logits, golden["serializer.occupancy_logits"], "logits")
    # anchors: the set and the order exact, padding as the official scripts
    assert out.anchor_counts.tolist() == [n]
    assert torch.equal(out.anchors, golden["serializer.anchor_xyzs"])
    assert torch.equal(out.points, golden["serializer.pts"])
    assert torch.equal(out.mask, golden["serializer.mask"])


def test_pipeline_golden(model, run, golden, meta):
    out, _ = run
    n, K = meta["anchor_count"], 4
    assert_close(out.latents, golden["pipeline.latents"], "pipeline.latents")
    all_rows = model.lrm_generator.renderer.get_gaussians(out.points, out.latents)
    assert_close(all_rows, golden["pipeline.gaussians"], "pipeline.gaussians")
    assert out.gaussians.shape == (1, n * K, 14)
    assert_close(out.gaussians, golden["pipeline.gaussians"][:, : n * K], "gaussians (real)")
    g = out.to_gaussians(0)
    assert len(g) == n * K
    ref = golden["pipeline.gaussians"][0, : n * K]
    assert_close(g.means, ref[:, :3], "means")
    assert_close(g.opacities, ref[:, 3], "opacities")
    assert_close(g.scales, ref[:, 4:7], "scales")
    assert_close(g.quats, ref[:, 7:11], "quats")
    assert_close(g.colors, ref[:, 11:14], "colors")


# ------------------------------------------------------------------ golden: generator alone


def test_generator_fixed_anchors_golden(model, golden, inputs):
    images, c2ws, Ks = inputs
    xyz = golden["fixed.xyzs"]
    proj = projection_matrices(c2ws, Ks)
    assert_close(proj, golden["fixed.proj_matrix"], "proj_matrix")
    assert_close(project_points(xyz, proj), golden["fixed.reference_points_cam"], "ref points")
    assert torch.equal(xyz_to_index(xyz, 1.0, 32), golden["fixed.xyzs_idx"])
    gen = model.lrm_generator
    layer0 = gen.transformer.layers[0]
    cap = {}
    h1 = layer0.self_attention.register_forward_hook(lambda m, a, o: cap.setdefault("sa", o))
    h2 = layer0.cross_attention.register_forward_hook(lambda m, a, o: cap.setdefault("ca", o))
    try:
        with torch.inference_mode():
            latents = gen.forward_latents(xyz, images, c2ws, Ks)
    finally:
        h1.remove()
        h2.remove()
    assert_close(cap["sa"], golden["fixed.layer0.self_attention_out"], "fixed sa")
    assert_close(cap["ca"], golden["fixed.layer0.cross_attention_out"], "fixed ca")
    assert_close(latents, golden["fixed.latents"], "fixed.latents")
    with torch.inference_mode():
        half = gen.forward_latents(xyz, images, c2ws, Ks, xyz_scale=0.5)
        gauss = gen.renderer.get_gaussians(xyz, latents)
    assert_close(half, golden["fixed.latents_xyz_scale_0.5"], "fixed.latents_xyz_scale_0.5")
    assert_close(gauss, golden["fixed.gaussians"], "fixed.gaussians")


def test_no_padding_runs_real_anchors_only(model, inputs, golden, meta):
    model.set_options(compat_padding=False)
    try:
        out = model(*inputs)
    finally:
        model.set_options(compat_padding=True)
    n = meta["anchor_count"]
    assert out.points.shape == (1, n, 3) and out.latents.shape[1] == n
    assert torch.equal(out.anchors, golden["serializer.anchor_xyzs"])
    # the official attention mixes rows, so dropping the padding changes the latents
    assert (out.latents - golden["pipeline.latents"][:, :n]).abs().max() > 1e-3


def test_batch_of_two(model, inputs, golden, meta):
    images, c2ws, Ks = inputs
    out = model(images.repeat(2, 1, 1, 1, 1), c2ws.repeat(2, 1, 1, 1), Ks.repeat(2, 1, 1, 1))
    n = meta["anchor_count"]
    assert out.anchor_counts.tolist() == [n, n]
    for b in range(2):
        assert torch.equal(out.anchors[b], golden["serializer.anchor_xyzs"][0])
        assert_close(out.latents[b], golden["pipeline.latents"][0], "batched latents")
        assert len(out.to_gaussians(b)) == n * 4


def test_no_anchors(model, inputs):
    bias = model.serializer.upsample.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias -= 1000.0
        model.set_options(compat_padding=False)
        out = model(*inputs)
        assert out.anchor_counts.tolist() == [0]
        assert out.anchors.shape == (1, 0, 3) and out.gaussians.shape == (1, 0, 14)
        assert len(out.to_gaussians()) == 0
        model.set_options(compat_padding=True)
        out = model(*inputs)  # official: all padding rows, none of them real
        assert out.points.shape == (1, 1280, 3) and int(out.mask.sum()) == 0
        assert out.gaussians.shape == (1, 0, 14)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
        model.set_options(compat_padding=True)


def test_standard_attention_mode_runs(model, inputs, golden):
    model.set_options(attention="standard")
    try:
        assert model.lrm_generator.transformer.layers[0].self_attention.mode == "standard"
        out = model(*inputs)
    finally:
        model.set_options(attention="official")
    assert torch.isfinite(out.gaussians).all()
    assert (out.latents - golden["pipeline.latents"]).abs().max() > 1e-3


# ------------------------------------------------------------------ state-dict layout


def test_full_config_keys_match_official():
    """The released architecture (built on the meta device: nothing allocated)."""
    ref = json.loads((FIXTURE / "geolrm_official_keys.json").read_text())
    with torch.device("meta"):
        model = GeoLRM()
    mine = [
        {"key": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in model.state_dict().items()
    ]
    assert mine == ref["keys"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == ref["param_counts"]["total"]


def test_tiny_state_dict_roundtrip(model):
    sd = model.state_dict()
    ref = load_file(str(WEIGHTS))
    assert set(sd) == set(ref) and len(sd) == 200
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k


def test_dinov2_key_mapping():
    tv = json.loads((FIXTURE / "dinov2_transformers_versions.json").read_text())
    old, new = tv["state_dict_keys_4.34.1"], tv["state_dict_keys_newest"]
    assert sorted(dinov2_key_to_official(k) for k in new) == sorted(old)
    assert sorted(dinov2_key_to_new(k) for k in old) == sorted(new)
    assert [dinov2_key_to_official(k) for k in old] == old  # idempotent
    prefixed = "lrm_generator.encoder.model.encoder.layer.11.attention.attention.value.bias"
    assert (
        dinov2_key_to_new(prefixed)
        == "lrm_generator.encoder.model.encoder.layer.11.attention.v_proj.bias"
    )
    # GeoLRM's own attention keys are never touched
    own = "serializer.transformer.layers.0.self_attention.wq.weight"
    assert dinov2_key_to_new(own) == dinov2_key_to_official(own) == own
    installed = {dinov2_key_to_installed(k) for k in old} | {
        dinov2_key_to_installed(k) for k in new
    }
    from transformers import Dinov2Config, Dinov2Model

    with torch.device("meta"):
        hf = Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3))
    assert installed == set(hf.state_dict())


def test_loads_transformers5_dinov2_names(tmp_path, meta):
    sd = load_file(str(WEIGHTS))
    renamed = {dinov2_key_to_new(k): v for k, v in sd.items()}
    assert renamed.keys() != sd.keys()
    path = tmp_path / "v5names.safetensors"
    save_file(renamed, str(path))
    m = GeoLRM.from_pretrained(path, config=meta["tiny_config"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k


# ------------------------------------------------------------------ maths against direct formulas


def _bicubic_direct(table: torch.Tensor, n_out: int) -> torch.Tensor:
    """Separable bicubic (A=-0.75, clamped taps), source (i+0.5)*n0/(n+0.1)-0.5, float64."""

    def cubic(t):
        a = -0.75
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        if t < 2:
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        return 0.0

    n0 = table.shape[0]
    m = torch.zeros(n_out, n0, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n0 / (n_out + 0.1) - 0.5
        f = math.floor(src)
        for tap in range(f - 1, f + 3):
            m[i, min(max(tap, 0), n0 - 1)] += cubic(src - tap)
    return torch.einsum("ia,jb,abc->ijc", m, m, table.double())


@pytest.mark.parametrize("n", [8, 32, 40])
def test_pos_embed_interpolation_4341(n):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 37 * 37, 5, generator=g)
    out = interpolate_pos_embed_4341(pos, n, n)
    assert out.shape == (1, 1 + n * n, 5)
    assert torch.equal(out[:, 0], pos[:, 0])
    ref = _bicubic_direct(pos[0, 1:].reshape(37, 37, 5), n).reshape(n * n, 5)
    assert_close(out[0, 1:], ref.float(), "interp", atol=1e-5)
    # and it differs from the size=n mapping of newer transformers
    newer = F.interpolate(
        pos[:, 1:].reshape(1, 37, 37, 5).permute(0, 3, 1, 2), size=(n, n), mode="bicubic"
    )
    assert (newer.permute(0, 2, 3, 1).reshape(n * n, 5) - out[0, 1:]).abs().max() > 1e-3
    assert interpolate_pos_embed_4341(pos, 37, 37) is pos


def _rope_naive(x, pos, base=10000.0):
    out = x.clone()
    B, S, H, Dh = x.shape
    q = Dh // 6
    for b in range(B):
        for s in range(S):
            for ax in range(3):
                for j in range(q):
                    ang = float(pos[b, s, ax]) / base ** (j / q)
                    u = x[b, s, :, 2 * q * ax + j]
                    v = x[b, s, :, 2 * q * ax + q + j]
                    out[b, s, :, 2 * q * ax + j] = u * math.cos(ang) - v * math.sin(ang)
                    out[b, s, :, 2 * q * ax + q + j] = v * math.cos(ang) + u * math.sin(ang)
    return out


def _attention_inputs(seed=0, S=10, H=2, Dh=12):
    g = torch.Generator().manual_seed(seed)
    attn_std = SelfAttention(H * Dh, H, "standard")
    for p in attn_std.parameters():
        p.data = torch.randn(p.shape, generator=g) / math.sqrt(H * Dh)
    x = torch.randn(1, S, H * Dh, generator=g)
    pos = torch.randint(0, 32, (1, S, 3), generator=g)
    return attn_std, x, pos


def test_rope3d_matches_naive():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 12, generator=g)
    pos = torch.randint(0, 128, (2, 5, 3), generator=g)
    assert_close(rope3d(x, pos), _rope_naive(x, pos), "rope", atol=1e-5)


def test_standard_attention_matches_naive():
    attn, x, pos = _attention_inputs()
    H, Dh = attn.heads, attn.head_dim
    q = _rope_naive(attn.wq(x).view(1, -1, H, Dh), pos)
    k = _rope_naive(attn.wk(x).view(1, -1, H, Dh), pos)
    v = attn.wv(x).view(1, -1, H, Dh)
    heads = []
    for h in range(H):
        a = torch.softmax(q[0, :, h] @ k[0, :, h].T / math.sqrt(Dh), dim=-1)
        heads.append(a @ v[0, :, h])
    ref = attn.wo(torch.cat(heads, dim=-1)[None])
    with torch.no_grad():
        assert_close(attn(x, pos), ref, "standard attention")


def test_official_attention_matches_described_scramble():
    attn, x, pos = _attention_inputs(S=7, H=4)
    attn.mode = "official"
    S, H, Dh = x.shape[1], attn.heads, attn.head_dim
    q = attn.wq(x).view(S, H, Dh)
    k = attn.wk(x).view(S, H, Dh)
    v = attn.wv(x).view(S, H, Dh)
    o = torch.stack([torch.softmax(q[s] @ k[s].T / math.sqrt(Dh), -1) @ v[s] for s in range(S)])
    rows = torch.zeros(S, H * Dh)
    for r in range(S):
        for c in range(H):
            flat = r * H + c
            rows[r, c * Dh : (c + 1) * Dh] = o[flat % S, flat // S]
    with torch.no_grad():
        assert_close(attn(x, pos), attn.wo(rows)[None], "official attention")


def test_official_attention_ignores_positions():
    attn, x, pos = _attention_inputs(S=9)
    attn.mode = "official"
    with torch.no_grad():
        a = attn(x, pos)
        b = attn(x, torch.randint(0, 128, pos.shape))
        c = attn(x, torch.zeros_like(pos))
        attn.mode = "standard"
        d = attn(x, pos)
        e = attn(x, torch.zeros_like(pos))
    assert_close(a, b, "rope cancels", atol=1e-5)
    assert_close(a, c, "rope cancels", atol=1e-5)
    assert (d - e).abs().max() > 1e-3  # but it matters across tokens


@pytest.mark.parametrize("path", ["default", "torch"])
def test_deformable_sample_matches_grid_sample(path):
    g = torch.Generator().manual_seed(0)
    B, Hc, C, S, P = 2, 3, 5, 11, 4
    shapes = ((6, 9), (3, 4))
    L = sum(h * w for h, w in shapes)
    value = torch.randn(B, L, Hc, C, generator=g)
    ref = torch.rand(B, S, 2, generator=g) * 1.2 - 0.1  # some outside
    offsets = torch.randn(B, S, Hc, 2, P, 2, generator=g) * 2
    ref[0, 0] = torch.tensor([float("nan"), 0.5])
    ref[0, 1] = torch.tensor([1e30, -1e30])
    w = torch.rand(B, S, Hc, 2, P, generator=g)
    fn = deformable_sample if path == "default" else _deformable_sample_torch
    out = fn(value, shapes, ref, offsets, w)
    # reference: grid_sample per level, as the mmcv pytorch implementation
    wh = torch.tensor([[wd, h] for h, wd in shapes], dtype=torch.float32)
    loc = ref[:, :, None, None, None, :] + offsets / wh[:, None, :]
    grid = torch.nan_to_num(loc, nan=-10.0).clamp(-10, 10) * 2 - 1
    expected = torch.zeros(B, Hc, C, S)
    start = 0
    for lvl, (h, wd) in enumerate(shapes):
        v = value[:, start : start + h * wd].permute(0, 2, 3, 1).reshape(B * Hc, C, h, wd)
        gl = grid[:, :, :, lvl].transpose(1, 2).reshape(B * Hc, S, P, 2)
        s = F.grid_sample(v, gl, mode="bilinear", padding_mode="zeros", align_corners=False)
        wl = w[:, :, :, lvl].transpose(1, 2).reshape(B * Hc, 1, S, P)
        expected += (s * wl).sum(-1).view(B, Hc, C, S)
        start += h * wd
    expected = expected.permute(0, 3, 1, 2).reshape(B, S, Hc * C)
    assert_close(out, expected, "deformable sampling", atol=1e-5)


def test_sampling_kernel_compiles_without_a_cache_dir(numba_without_cache):
    """Where numba can write no cache, the fused sampling kernel is built uncached (through
    :func:`pipelines.numba_jit.cached_njit`) instead of raising at decoration."""
    from pipelines.geolrm.model import _numba_kernel

    calls = numba_without_cache
    kernel = _numba_kernel.__wrapped__(5)  # a fresh build, not the process-wide one
    assert calls == [True, False]
    assert callable(kernel)


# ------------------------------------------------------------------ anchors


def test_random_subset_deterministic():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 16, 16, 16, generator=g)  # ~2048 positive cells
    count = int((logits > 0).sum())
    cap = 500
    a = select_anchors(logits, cap, torch.Generator().manual_seed(42))[0]
    b = select_anchors(logits, cap, torch.Generator().manual_seed(42))[0]
    c = select_anchors(logits, cap, torch.Generator().manual_seed(7))[0]
    assert a.shape == (cap, 3) and torch.equal(a, b) and not torch.equal(a, c)
    lin = 0.5 * torch.linspace(-1, 1, 16)
    full = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    expected = full[logits.reshape(-1) > 0][
        torch.randperm(count, generator=torch.Generator().manual_seed(42))[:cap]
    ]
    assert torch.equal(a, expected)
    below = select_anchors(logits, count + 1, torch.Generator().manual_seed(42))[0]
    assert torch.equal(below, full[logits.reshape(-1) > 0])  # C order, no subset
    top = select_anchors(logits, 10**6, None, force_anchors=100)[0]
    assert top.shape == (100, 3)
    assert torch.equal(top, full[torch.topk(logits.reshape(-1), 100).indices.sort().values])


def test_model_subset_seeded(model, inputs):
    model.set_options(max_seq_len=600, seed=3)
    try:
        a, b = model(*inputs), model(*inputs)
        model.set_options(seed=4)
        c = model(*inputs)
    finally:
        model.set_options(max_seq_len=1280, seed=42)
    assert a.anchors.shape == (1, 600, 3) and int(a.mask.sum()) == 600
    assert torch.equal(a.anchors, b.anchors) and torch.equal(a.gaussians, b.gaussians)
    assert not torch.equal(a.anchors, c.anchors)


# ------------------------------------------------------------------ loader


def _tiny_state() -> dict[str, torch.Tensor]:
    return load_file(str(WEIGHTS))


def test_loader_missing_key(tmp_path, meta):
    sd = _tiny_state()
    del sd["serializer.upsample.bias"]
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(InputError, match=r"missing keys 1: serializer\.upsample\.bias"):
        GeoLRM.from_pretrained(tmp_path / "w.safetensors", config=meta["tiny_config"])


def test_loader_unexpected_key(tmp_path, meta):
    sd = _tiny_state()
    for i in range(7):
        sd[f"extra.thing{i}"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(InputError, match=r"unexpected keys 7: extra\.thing0.*\(\+2 more\)") as e:
        GeoLRM.from_pretrained(tmp_path / "w.safetensors", config=meta["tiny_config"])
    assert "\n" not in str(e.value)


def test_loader_shape_mismatch(tmp_path):
    # tiny weights against the released config: every shape differs
    with pytest.raises(InputError, match=r"shape mismatches .*\(\+\d+ more\)"):
        GeoLRM.from_pretrained(WEIGHTS)


def test_loader_ignores_lpips_and_reads_nested_ckpt(tmp_path, meta):
    sd = _tiny_state()
    full = dict(sd)
    full["lpips.net.slice1.0.weight"] = torch.zeros(2, 3)
    full["ssim.window"] = torch.zeros(3)
    assert "lpips." in TRAINING_ONLY_PREFIXES
    path = tmp_path / "geolrm.ckpt"
    torch.save({"state_dict": full, "epoch": 3, "global_step": 10}, path)
    m = GeoLRM.from_pretrained(path, config=meta["tiny_config"])
    assert torch.equal(m.state_dict()["serializer.upsample.bias"], sd["serializer.upsample.bias"])
    flat = tmp_path / "flat.pt"
    torch.save(full, flat)
    assert len(read_state_dict(flat)) == 202
    GeoLRM.from_pretrained(flat, config=meta["tiny_config"])


def test_loader_missing_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="geolrm weights download"):
        GeoLRM.from_pretrained(tmp_path / "nope.ckpt")


def test_loader_unsafe_pickle(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": Path("x")}, path)
    with pytest.raises(InputError, match="weights_only"):
        read_state_dict(path)


def test_convert_checkpoint(tmp_path, meta):
    sd = _tiny_state()
    src = tmp_path / "geolrm.ckpt"
    torch.save(
        {
            "state_dict": {
                **{dinov2_key_to_new(k): v for k, v in sd.items()},
                "lpips.x": torch.zeros(1),
            }
        },
        src,
    )
    dst = convert_checkpoint(
        src, tmp_path / "out" / "geolrm.safetensors", config=meta["tiny_config"]
    )
    back = load_file(str(dst))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    assert [p.name for p in dst.parent.iterdir()] == ["geolrm.safetensors"]


# ------------------------------------------------------------------ config and inputs


def test_config_errors_and_inputs(model, inputs):
    with pytest.raises(InputError, match="unknown serializer config key"):
        GeoLRM.from_config({"serializer": {"grid_sise": 3}})
    with pytest.raises(InputError, match="unknown GeoLRM option"):
        GeoLRM.from_config(None, max_len=3)
    images, c2ws, Ks = inputs
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        model(images * 255, c2ws, Ks)
    with pytest.raises(InputError, match="multiple of 14"):
        model(images[..., :100, :100], c2ws, Ks)
    with pytest.raises(InputError, match="Ks must be"):
        model(images, c2ws, Ks[:, :2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_golden_on_cuda(meta, golden, inputs):
    """The torch sampling path on the GPU reproduces the fixture too."""
    model = GeoLRM.from_pretrained(WEIGHTS, config=meta["tiny_config"], max_seq_len=1280)
    model = model.cuda()
    out = model(*(t.cuda() for t in inputs))
    assert torch.equal(out.anchors.cpu(), golden["serializer.anchor_xyzs"])
    assert_close(out.latents.cpu(), golden["pipeline.latents"], "cuda latents", atol=1e-4)


# ------------------------------------------------------------------ reduced precision


def test_geometry_stays_fp32_under_autocast(golden):
    """Rays, projection matrices and reference points are computed in fp32 even inside a bf16
    autocast region (8-bit mantissas would move reference points by whole pixels)."""
    c2ws, Ks = golden["inputs.c2ws"][0], golden["inputs.Ks"][0]
    xyz = torch.rand(1, 50, 3) - 0.5
    rays = ray_embedding(c2ws, Ks, 28, 28)
    uv = project_points(xyz, projection_matrices(c2ws[None], Ks[None]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rays_ac = ray_embedding(c2ws, Ks, 28, 28)
        uv_ac = project_points(xyz, projection_matrices(c2ws[None], Ks[None]))
    assert rays_ac.dtype == uv_ac.dtype == torch.float32
    assert torch.equal(rays_ac, rays) and torch.equal(uv_ac, uv)


def test_bf16_autocast_forward_stays_close_to_fp32(meta, inputs):
    """The whole model runs under bf16 autocast (what ``--precision bf16`` does on CUDA; here
    CPU autocast, which casts the same matmul-shaped ops to bf16). The proposal logits move by
    under 2% of their range; given the same anchors (the official attention's token scramble
    makes the output depend on the exact anchor list, so a changed anchor near the top-k cut
    would shift every later token), the reconstruction latents stay within 3% of fp32."""
    model = GeoLRM.from_pretrained(WEIGHTS, config=meta["tiny_config"], max_seq_len=1280)
    model.set_options(force_anchors=800)
    ref = model(*inputs)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*inputs)
        latents = model.lrm_generator.forward_latents(ref.points, *inputs)
    logits = out.occupancy_logits.float()
    spread = float(ref.occupancy_logits.max() - ref.occupancy_logits.min())
    assert 0 < float((logits - ref.occupancy_logits).abs().max()) < 0.02 * spread
    assert torch.isfinite(out.gaussians).all()
    assert latents.dtype == torch.float32  # the final RMSNorm is autocast's fp32 list
    rel = float((latents - ref.latents).norm() / ref.latents.norm())
    assert 0 < rel < 0.03, rel
