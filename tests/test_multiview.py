"""Background removal / framing, Zero123++ and SV3D building blocks, on tiny random models.

The tiny components (tests/tiny_multiview.py) are built from configs and saved in the layouts
the real weights use, then loaded through the pipelines' own ``from_pretrained``.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tiny_multiview as tm
import torch
from PIL import Image

from pipelines import preprocess as pp
from pipelines.errors import InputError
from pipelines.threads import torch_threads

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and the CPU is shared (threads spin-wait)."""
    with torch_threads(1):
        yield


def rgba_square(w=100, h=80, box=(30, 20, 50, 30), color=(200, 40, 40)) -> Image.Image:
    """Transparent canvas with one opaque rectangle ``box = (left, top, right, bottom)``."""
    a = np.zeros((h, w, 4), np.uint8)
    left, top, right, bottom = box
    a[top:bottom, left:right] = (*color, 255)
    return Image.fromarray(a, "RGBA")


# ============================================================================================
# preprocess


def test_photo_fixtures_have_alpha() -> None:
    for name in ("Input_2.png", "Input_8.png"):
        im = pp.load_photo(PHOTOS / name)
        assert im.mode == "RGBA" and pp.has_alpha(im)
    assert not pp.has_alpha(Image.new("RGBA", (10, 10), (1, 2, 3, 255)))
    assert not pp.has_alpha(Image.new("RGB", (10, 10)))


def test_frame_official_padding() -> None:
    """``int(side / ratio)``, not ceil (GeoLRM src/utils/infer_util.py:52,
    sv3d_video_sample.py:148-153); Zero123++ crops ``[min, max)`` (infer_util.py:32-39) and pads
    in two steps (:42-61), SV3D crops the inclusive box and places it at ``side // 2 - h // 2``
    (:155-159)."""
    im = rgba_square(box=(30, 20, 50, 30))  # 20 x 10 object
    assert pp.object_bbox(im) == (30, 20, 50, 30)
    out, box = pp.frame(im, 0.5)  # zero123pp: 19 x 9 cropped
    assert box == (30, 20, 49, 29) and out.size == (38, 38)  # int(19 / 0.5)
    assert pp.object_bbox(out) == (9, 14, 28, 23)  # (19 - 9) // 2 + (38 - 19) // 2 = 14
    out, box = pp.frame(im, 0.5, style="sv3d")
    assert box == (30, 20, 50, 30) and out.size == (40, 40)
    assert pp.object_bbox(out) == (10, 15, 30, 25)  # 40 // 2 - 10 // 2 = 15
    assert pp.frame(im, 0.85)[0].size == (22, 22)  # int(19 / 0.85) = int(22.35)
    assert pp.frame(im, 0.85, style="sv3d")[0].size == (23, 23)  # int(23.53)
    with pytest.raises(InputError, match="foreground-ratio"):
        pp.frame(im, 0.0)
    with pytest.raises(InputError, match="preprocessing style"):
        pp.frame(im, 0.85, style="sv4d")


def test_preprocess_real_photo() -> None:
    res = pp.preprocess(PHOTOS / "Input_2.png", size=64)
    assert res.alpha_source == "input"
    assert res.image.size == res.rgba.size == (64, 64) and res.image.mode == "RGB"
    img = np.asarray(res.image)
    assert (img[0, 0] == 255).all() and (img[-1, -1] == 255).all()  # white background
    left, top, right, bottom = pp.object_bbox(res.rgba)
    side = max(right - left, bottom - top)
    assert abs(side / 64 - 0.85) < 0.05
    grey = pp.preprocess(PHOTOS / "Input_2.png", size=64, background=pp.GREY)
    assert tuple(np.asarray(grey.image)[0, 0]) == (127, 127, 127)


def test_composite_straight_alpha() -> None:
    px = Image.fromarray(np.array([[[255, 0, 0, 128], [9, 200, 41, 77]]], np.uint8), "RGBA")
    z = np.asarray(pp.composite(px, pp.WHITE))  # PIL paste (rounded), zero123plus/pipeline.py:37
    assert tuple(z[0, 0]) == (255, 127, 127) and tuple(z[0, 1]) == (181, 238, 190)
    assert tuple(np.asarray(pp.composite(px, pp.GREY))[0, 0]) == (191, 63, 63)
    s = np.asarray(pp.composite(px, pp.WHITE, style="sv3d"))  # float, truncated (:163-165)
    assert tuple(s[0, 0]) == (255, 127, 127) and tuple(s[0, 1]) == (180, 238, 190)


def test_no_rembg_uses_photo_as_is() -> None:
    """``--no_rembg`` skips rembg and the framing (GeoLRM run_geolrm_zero123.py:136-138): the
    shortest edge is resized and the centre cropped, no white margin (tests/test_preprocess.py
    checks the pixels)."""
    opaque = Image.new("RGB", (40, 20), (10, 200, 10))
    res = pp.preprocess(opaque, size=32, remove_bg=False, foreground_ratio=1.0)
    assert res.alpha_source == "none" and res.bbox == (10, 0, 30, 20)
    assert res.image.size == res.rgba.size == (32, 32)
    assert (np.asarray(res.rgba)[..., 3] == 255).all()  # the photo fills the square
    assert (np.asarray(res.image) == (10, 200, 10)).all()


def test_missing_rembg_model_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    opaque = Image.new("RGB", (40, 40), (10, 200, 10))
    with pytest.raises(InputError) as e:
        pp.preprocess(opaque, size=32)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("'u2net'", "U2NET_HOME", "geolrm weights download u2net", str(tmp_path)):
        assert part in msg, msg
    with pytest.raises(InputError, match="unknown background-removal model"):
        pp.check_rembg("nope")


def test_rembg_path_with_stub(tmp_path, monkeypatch) -> None:
    """The rembg call (stubbed: the real import takes a minute; tests/test_preprocess.py runs
    the real one): Zero123++ hands it the photo for a plain cut-out, SV3D a 768 px RGBA
    thumbnail with alpha matting; the cut-out frames the object."""
    home = tmp_path / "u2net"
    home.mkdir()
    (home / "u2netp.onnx").write_bytes(b"stub")
    monkeypatch.setenv("U2NET_HOME", str(home))
    calls = []

    def remove(img, session=None, alpha_matting=False):
        calls.append((img.mode, img.size, session, alpha_matting))
        m = np.zeros((img.size[1], img.size[0]), np.uint8)
        m[10:30, 5:15] = 255
        out = img.convert("RGBA")
        out.putalpha(Image.fromarray(m, "L"))
        return out

    fake = types.SimpleNamespace(new_session=lambda name: f"session:{name}", remove=remove)
    monkeypatch.setitem(sys.modules, "rembg", fake)
    monkeypatch.setattr(pp, "_SESSIONS", {})
    res = pp.preprocess(Image.new("RGB", (40, 40), (9, 9, 9)), size=40, rembg_model="u2netp")
    assert res.alpha_source == "rembg:u2netp"
    assert calls == [("RGB", (40, 40), "session:u2netp", False)]
    assert res.bbox == (5, 10, 14, 29)  # [min, max) as infer_util.py:32-39
    calls.clear()
    res = pp.preprocess(Image.new("RGB", (1600, 800)), size=32, rembg_model="u2netp", style="sv3d")
    assert calls == [("RGBA", (768, 384), "session:u2netp", True)]
    assert res.bbox == (10, 20, 32, 63)  # the thumbnail's (5, 10, 15, 30) x 1600 / 768


def test_bad_images(tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="cannot read image") as e:
        pp.load_photo(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no such file"):
        pp.load_photo(tmp_path / "missing.png")
    empty = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    with pytest.raises(InputError, match="fully transparent"):
        pp.preprocess(empty, size=16)


# ============================================================================================
# Zero123++


@pytest.fixture(scope="module")
def z123_dir(tmp_path_factory) -> Path:
    return tm.build_zero123pp(tmp_path_factory.mktemp("z123"))


@pytest.fixture(scope="module")
def z123(z123_dir):
    from pipelines.multiview.zero123pp import Zero123PlusPipeline

    return Zero123PlusPipeline.from_pretrained(z123_dir)


@pytest.fixture(scope="module")
def cond_image() -> Image.Image:
    return pp.preprocess(PHOTOS / "Input_8.png", size=tm.COND).image


def test_grid_split_layout() -> None:
    from pipelines.multiview.rigs import zero123pp_view_indices as view_indices
    from pipelines.multiview.zero123pp import grid_to_views, views_to_grid

    t = 4
    grid = torch.zeros(3, 3 * t, 2 * t)
    for k in range(6):
        r, c = k // 2, k % 2
        grid[:, r * t : (r + 1) * t, c * t : (c + 1) * t] = k
    views = grid_to_views(grid)
    assert views.shape == (6, 3, t, t)
    for k in range(6):
        assert (views[k] == k).all()
    assert torch.equal(views_to_grid(views), grid)
    assert view_indices(6) == (0, 1, 2, 3, 4, 5)
    assert view_indices(4) == (0, 2, 4, 5)
    with pytest.raises(InputError):
        view_indices(5)


def test_zero123pp_rig_cameras() -> None:
    from pipelines.multiview.rigs import zero123pp_cameras

    cams = zero123pp_cameras(6, size=320)
    pos = cams.c2w[:, :3, 3].double()
    r = pos.norm(dim=-1)
    assert torch.allclose(r, torch.full_like(r, 1.5), atol=1e-5)
    az = torch.rad2deg(torch.atan2(pos[:, 1], pos[:, 0])) % 360
    el = torch.rad2deg(torch.asin(pos[:, 2] / r))
    assert torch.allclose(az, torch.tensor([30.0, 90, 150, 210, 270, 330]).double(), atol=1e-4)
    assert torch.allclose(el, torch.tensor([20.0, -10, 20, -10, 20, -10]).double(), atol=1e-4)
    fx = float(cams.K[0, 0, 0])
    assert math.isclose(2 * math.degrees(math.atan(160 / fx)), 30.0, abs_tol=1e-4)
    four = zero123pp_cameras(4, size=320)
    assert torch.equal(four.c2w, cams.c2w[[0, 2, 4, 5]])


def test_scheduler_is_trailing_euler_ancestral(z123) -> None:
    from diffusers import EulerAncestralDiscreteScheduler

    s = z123.scheduler
    assert isinstance(s, EulerAncestralDiscreteScheduler)
    assert s.config.timestep_spacing == "trailing"
    assert s.config.prediction_type == "v_prediction"
    s.set_timesteps(75)
    ts = [int(t) for t in s.timesteps]
    assert ts[:3] == [999, 986, 972] and ts[-3:] == [39, 26, 12]
    assert math.isclose(float(s.init_noise_sigma), 25.146, rel_tol=1e-3)


def test_constants() -> None:
    from pipelines.multiview import zero123pp as z

    assert (z.LATENT_SHIFT, z.LATENT_SCALE, z.IMAGE_UNSCALE) == (0.22, 0.75, 1.6)
    assert (z.DEFAULT_STEPS, z.DEFAULT_GUIDANCE, z.DEFAULT_TILE) == (75, 4.0, 320)


def test_processors_from_config(z123, cond_image) -> None:
    vae_x = z123.vae_processor(cond_image)
    assert vae_x.shape == (1, 3, tm.COND, tm.COND)
    arr = torch.from_numpy(np.asarray(cond_image, np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(vae_x[0], (arr - 0.5) / 0.8, atol=1e-6)  # mean 0.5, std 0.8
    clip_x = z123.clip_processor(cond_image.resize((64, 64)))
    assert clip_x.shape == (1, 3, tm.CLIP_SIZE, tm.CLIP_SIZE)


@pytest.mark.parametrize("size", [(227, 224), (224, 301), (300, 250)])
def test_image_processor_matches_transformers(size) -> None:
    """Resize of the shortest edge and centre crop as transformers' CLIP processor (PIL
    backend): the crop offset floors (``image_transforms.center_crop``), so an odd margin
    keeps one more column on the right, not on the left."""
    from pipelines.multiview._common import ImageProcessor

    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    theirs = cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    want = theirs(im, return_tensors="pt").pixel_values
    got = ImageProcessor(224, 224)(im)
    assert got.shape == want.shape == (1, 3, 224, 224)
    assert (got - want).abs().max() < 1e-5


def test_global_conditioning_ramp(z123, cond_image) -> None:
    emb = z123.encode_prompt(cond_image, guidance=True)
    text = z123.empty_prompt_embeds()
    assert emb.shape == (2, 77, tm.DIM)
    assert torch.equal(emb[0], text[0])  # unconditional: text("") only
    with torch.no_grad():
        img = z123.vision_encoder(z123.clip_processor(cond_image)).image_embeds[0]
    ramp = torch.tensor(tm.ramp())
    assert torch.allclose(emb[1] - emb[0], ramp[:, None] * img[None], atol=1e-5)


def test_condition_latents_unscaled(z123, cond_image) -> None:
    """[negative, condition] posterior samples, without the 0.18215 factor."""
    from pipelines.multiview._common import make_generator

    lat = z123.encode_condition(cond_image, make_generator(0), guidance=True)
    s = z123.vae_scale_factor
    assert lat.shape == (2, 4, tm.COND // s, tm.COND // s)
    with torch.no_grad():
        x = torch.cat([torch.zeros(1, 3, tm.COND, tm.COND), z123.vae_processor(cond_image)])
        dist = z123.vae.encode(x).latent_dist
    noise = torch.randn(dist.mean.shape, generator=make_generator(0))
    assert torch.allclose(lat, dist.mean + dist.std * noise, atol=1e-5)


def test_reference_attention_wiring(z123) -> None:
    """Every attn1 is wrapped (attn2 is not); the write pass stores the tokens the read pass
    appends to keys / values."""
    from pipelines.multiview.zero123pp import ReferenceAttnProcessor

    unet, state = z123.unet, z123.ref_state
    procs = unet.attn_processors
    self_attn = [n for n in procs if n.endswith("attn1.processor")]
    assert self_attn and all(isinstance(procs[n], ReferenceAttnProcessor) for n in self_attn)
    assert not any(isinstance(p, ReferenceAttnProcessor) for n, p in procs.items() if "attn2" in n)
    seen: dict[str, tuple] = {}
    originals = {name: procs[name].base for name in self_attn}
    for name in self_attn:
        proc = procs[name]
        base = originals[name]

        def spy(attn, hs, ctx, mask, temb, _name=name, _base=base):
            seen[(_name, state.mode)] = (hs.shape[1], ctx.shape[1], ctx)
            return _base(attn, hs, ctx, mask, temb)

        proc.base = spy
    try:
        g = torch.Generator().manual_seed(0)
        prompt = torch.randn(1, 77, tm.DIM, generator=g)
        ref = torch.randn(1, 4, 4, 4, generator=g)
        x = torch.randn(1, 4, 12, 8, generator=g)
        t = torch.tensor(500)
        with torch.no_grad():
            state.mode = "write"
            unet(ref, t, encoder_hidden_states=prompt)
            written = {k: v.clone() for k, v in state.bank.items()}
            state.mode = "read"
            unet(x, t, encoder_hidden_states=prompt)
        assert set(written) == set(self_attn)
        for name in self_attn:
            n_ref, n_ctx_w, ctx_w = seen[(name, "write")]
            n_q, n_ctx_r, ctx_r = seen[(name, "read")]
            assert n_ctx_w == n_ref  # write: plain self-attention
            assert n_ctx_r == n_q + n_ref  # read: own tokens + the reference's
            assert torch.equal(ctx_r[:, n_q:], written[name])
    finally:
        state.clear()
        for name in self_attn:
            procs[name].base = originals[name]


def test_reference_attention_duplicate_tokens_is_identity(z123) -> None:
    """Reading a reference equal to the input duplicates every key/value: softmax attention
    gives exactly the plain output (so the concatenation is along the token axis, with the
    reference's own tokens), while another reference changes it."""
    unet, state = z123.unet, z123.ref_state
    g = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 77, tm.DIM, generator=g)
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor(300)
    with torch.no_grad():
        state.clear()
        plain = unet(x, t, encoder_hidden_states=prompt).sample
        state.mode = "write"
        unet(x, t, encoder_hidden_states=prompt)
        state.mode = "read"
        same = unet(x, t, encoder_hidden_states=prompt).sample
        state.clear()
        state.mode = "write"
        unet(torch.randn(1, 4, 8, 8, generator=g), t, encoder_hidden_states=prompt)
        state.mode = "read"
        other = unet(x, t, encoder_hidden_states=prompt).sample
        state.clear()
    assert torch.allclose(same, plain, atol=1e-5)
    assert (other - plain).abs().max() > 1e-3


def test_pipeline_output_deterministic_and_uses_reference(z123, cond_image) -> None:
    kw = dict(num_inference_steps=2, tile_size=tm.TILE)
    a = z123(cond_image, seed=3, **kw)
    assert a.grid.shape == (3, 3 * tm.TILE, 2 * tm.TILE)
    assert a.views.shape == (6, 3, tm.TILE, tm.TILE)
    assert 0.0 <= float(a.grid.min()) and float(a.grid.max()) <= 1.0
    b = z123(cond_image, seed=3, **kw)
    assert torch.equal(a.grid, b.grid)
    c = z123(cond_image, seed=4, **kw)
    assert not torch.equal(a.grid, c.grid)
    off = z123(cond_image, seed=3, reference_attention=False, **kw)
    assert (off.grid - a.grid).abs().max() > 1e-3
    other = pp.preprocess(PHOTOS / "Input_2.png", size=tm.COND).image
    d = z123(other, seed=3, **kw)
    assert (d.grid - a.grid).abs().max() > 1e-3  # the condition matters
    with pytest.raises(InputError, match="tile size"):
        z123(cond_image, tile_size=12, num_inference_steps=1)


def test_decode_undoes_latent_and_image_scaling(z123) -> None:
    z = torch.randn(1, 4, 6, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = z123.vae.decode((z / 0.75 + 0.22) / 0.18215).sample * 1.6
    assert torch.allclose(z123.decode(z), (ref / 2 + 0.5).clamp(0, 1), atol=1e-5)


def test_replacement_unet_file(z123_dir, tmp_path) -> None:
    """InstantMesh-style fp16 pickle replaces the folder's UNet weights (loaded strictly)."""
    from pipelines.multiview.zero123pp import Zero123PlusPipeline

    path = tm.white_unet_file(tmp_path / "diffusion_pytorch_model.bin")
    pipe = Zero123PlusPipeline.from_pretrained(z123_dir, unet_weights=path)
    sd = torch.load(path, weights_only=True)
    own = pipe.unet.state_dict()
    assert all(torch.equal(own[k], sd[k].float()) for k in sd)
    assert own["conv_in.weight"].dtype == torch.float32
    bad = tmp_path / "bad.bin"
    torch.save({"conv_in.weight": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="do not match"):
        Zero123PlusPipeline.from_pretrained(z123_dir, unet_weights=bad)


def test_incomplete_folder_errors(z123_dir, tmp_path) -> None:
    import shutil

    from pipelines.multiview.zero123pp import Zero123PlusPipeline

    with pytest.raises(InputError, match="model_index.json"):
        Zero123PlusPipeline.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(z123_dir, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(InputError, match="vae"):
        Zero123PlusPipeline.from_pretrained(broken)


# ============================================================================================
# SV3D


def test_sv3d_camera_vectors() -> None:
    """[emb256(1e-5) | emb512(polar) | emb512(azimuth)], cos first, max period 10000; polar =
    90 - 10 deg = 1.39626 rad; azimuth of frame i = (i + 1) * 360 / 21, the last 0."""
    from diffusers.models.embeddings import Timesteps

    from pipelines.multiview.sv3d import azimuths_rad, camera_vectors

    az = azimuths_rad()
    assert az.shape == (21,)
    assert torch.allclose(
        torch.rad2deg(az[:3]), torch.tensor([360 / 21, 720 / 21, 1080 / 21]).double()
    )
    assert float(az[-1]) == 0.0
    v = camera_vectors(10.0)
    assert v.shape == (21, 1280)
    polar = math.radians(80.0)
    assert math.isclose(polar, 1.39626, abs_tol=1e-5)
    assert torch.allclose(v[:, 256], torch.full((21,), math.cos(polar)), atol=1e-6)  # 0.17365
    assert torch.allclose(v[:, 512], torch.full((21,), math.sin(polar)), atol=1e-6)  # 0.98481
    assert torch.allclose(v[:, 0], torch.ones(21)) and torch.allclose(
        v[:, 128], torch.full((21,), 1e-5)
    )
    assert torch.allclose(v[:, 768], torch.cos(az).float(), atol=1e-6)
    assert torch.allclose(v[:, 1024], torch.sin(az).float(), atol=1e-6)
    k = 37  # a higher frequency: exp(-ln(10000) k / 256)
    f = math.exp(-math.log(10000) * k / 256)
    assert torch.allclose(v[:, 768 + k], torch.cos(az * f).float(), atol=1e-5)
    # diffusers' Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0) agrees
    ref = torch.cat(
        [
            Timesteps(256, True, 0)(torch.full((21,), 1e-5)),
            Timesteps(512, True, 0)(torch.full((21,), polar)),
            Timesteps(512, True, 0)(az.float()),
        ],
        -1,
    )
    assert torch.allclose(v, ref, atol=1e-5)


def test_sv3d_triangle_guidance() -> None:
    from pipelines.multiview.sv3d import triangle_guidance

    g = triangle_guidance(21, 2.5, 1.0)
    expect = [1.0 + 0.15 * i for i in range(11)] + [2.5 - 0.15 * i for i in range(1, 11)]
    assert torch.allclose(g, torch.tensor(expect), atol=1e-6)
    assert int(g.argmax()) == 10 and float(g[-1]) == 1.0


def test_sv3d_sigmas_and_scalings() -> None:
    from diffusers import EulerDiscreteScheduler

    from pipelines.multiview.sv3d import edm_scalings, karras_sigmas

    s = karras_sigmas(50)
    assert s.shape == (51,) and float(s[-1]) == 0.0
    assert math.isclose(float(s[0]), 700.0) and math.isclose(float(s[49]), 0.002)
    assert [round(float(x), 1) for x in s[1:3]] == [620.3, 548.6]
    assert [round(float(x), 5) for x in s[47:49]] == [0.00768, 0.00405]
    # the same as diffusers' SVD scheduler (Karras sigmas 0.002 .. 700)
    ref = EulerDiscreteScheduler(
        prediction_type="v_prediction",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_type="continuous",
        timestep_spacing="leading",
    )
    ref.set_timesteps(50)
    assert torch.allclose(s.float(), ref.sigmas.float(), rtol=1e-5)
    c_skip, c_out, c_in, c_noise = edm_scalings(700.0)
    assert math.isclose(c_noise, 1.6378, abs_tol=1e-4)
    assert math.isclose(edm_scalings(0.002)[3], -1.5537, abs_tol=1e-4)
    assert math.isclose(c_skip, 1 / (700.0**2 + 1)) and math.isclose(c_in, 1 / math.hypot(700, 1))
    assert math.isclose(c_out, -700 / math.hypot(700, 1))


def test_sv3d_unet_key_mapping_names() -> None:
    """Well-known names of the SVD conversion, on the released architecture."""
    from pipelines.multiview.sv3d import UNET_CONFIG, unet_key_map

    m = unet_key_map(UNET_CONFIG)
    cases = {
        "input_blocks.0.0.weight": "conv_in.weight",
        "time_embed.2.bias": "time_embedding.linear_2.bias",
        "label_emb.0.0.weight": "add_embedding.linear_1.weight",
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.9.0.op.bias": "down_blocks.2.downsamplers.0.conv.bias",
        "input_blocks.4.0.skip_connection.weight": (
            "down_blocks.1.resnets.0.spatial_res_block.conv_shortcut.weight"
        ),
        "input_blocks.1.0.time_stack.in_layers.2.weight": (
            "down_blocks.0.resnets.0.temporal_res_block.conv1.weight"
        ),
        "input_blocks.2.0.time_mixer.mix_factor": "down_blocks.0.resnets.1.time_mixer.mix_factor",
        "input_blocks.1.1.time_stack.0.attn1.to_q.weight": (
            "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q.weight"
        ),
        "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight": (
            "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"
        ),
        "input_blocks.11.0.out_layers.3.weight": "down_blocks.3.resnets.1.spatial_res_block.conv2.weight",
        "middle_block.1.time_pos_embed.0.weight": "mid_block.attentions.0.time_pos_embed.linear_1.weight",
        "middle_block.2.time_mixer.mix_factor": "mid_block.resnets.1.time_mixer.mix_factor",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.bias": "up_blocks.1.upsamplers.0.conv.bias",
        "output_blocks.8.2.conv.weight": "up_blocks.2.upsamplers.0.conv.weight",
        "output_blocks.11.1.proj_out.weight": "up_blocks.3.attentions.2.proj_out.weight",
        "output_blocks.3.0.emb_layers.1.weight": "up_blocks.1.resnets.0.spatial_res_block.time_emb_proj.weight",
        "out.2.weight": "conv_out.weight",
    }
    for old, new in cases.items():
        assert m(old) == new, old
    for bad in (
        "input_blocks.12.0.in_layers.0.weight",
        "output_blocks.2.2.conv.weight",
        "foo.weight",
    ):
        with pytest.raises(KeyError):
            m(bad)


def test_sv3d_unet_key_mapping_is_a_bijection() -> None:
    """Every tensor of the released-size UNet (built on the meta device) has exactly one
    original name (tests/tiny_multiview.py writes them from the sgm layout) that maps back."""
    from pipelines.multiview.sv3d import UNET_CONFIG, SV3DUNet, convert_unet_state_dict

    with torch.device("meta"):
        unet = SV3DUNet.from_config(UNET_CONFIG)
    own = unet.state_dict()
    assert unet.add_embedding.linear_1.in_features == 1280 and unet.conv_in.in_channels == 8
    original = {tm.sgm_unet_name(k, UNET_CONFIG): v for k, v in own.items()}
    assert len(original) == len(own)
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in original
    back = convert_unet_state_dict(original, UNET_CONFIG)
    assert set(back) == set(own)
    for k in own:
        assert back[k] is original[tm.sgm_unet_name(k, UNET_CONFIG)]
    with pytest.raises(InputError, match="unexpected UNet tensor"):
        convert_unet_state_dict({"model.diffusion_model.bogus.weight": torch.zeros(1)}, UNET_CONFIG)


@pytest.fixture(scope="module")
def sv3d_dir(tmp_path_factory) -> Path:
    return tm.build_sv3d(tmp_path_factory.mktemp("sv3d"))


@pytest.fixture(scope="module")
def sv3d(sv3d_dir):
    from pipelines.multiview.sv3d import SV3DPipeline

    return SV3DPipeline.from_pretrained(sv3d_dir)


def test_sv3d_single_file_loads_every_tensor(sv3d) -> None:
    """The original-naming file gives back the exact UNet, VAE (no post_quant_conv) and CLIP."""
    unet, vae, clip = tm.tiny_sv3d_modules()
    for got, want in ((sv3d.unet, unet), (sv3d.vae, vae), (sv3d.image_encoder, clip)):
        a, b = got.state_dict(), want.state_dict()
        assert set(a) == set(b)
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert sv3d.vae.post_quant_conv is None and sv3d.vae.quant_conv is not None
    x = torch.rand(1, 3, tm.CLIP_SIZE, tm.CLIP_SIZE)
    with torch.no_grad():
        assert torch.allclose(sv3d.image_encoder(x).image_embeds, clip(x).image_embeds, atol=1e-5)


def test_sv3d_unet_forward_matches_stock(sv3d) -> None:
    """With one camera vector for every frame, the per-frame forward equals the stock
    UNetSpatioTemporalConditionModel forward fed that vector; per-frame vectors change it."""
    from diffusers import UNetSpatioTemporalConditionModel

    from pipelines.multiview.sv3d import camera_vectors

    unet = sv3d.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 21, 8, 8, 8, generator=g)
    ctx = torch.randn(1, 1, tm.DIM, generator=g)
    t = torch.tensor([0.3])
    cams = camera_vectors(10.0)
    same = cams[:1].expand(21, -1)
    with torch.no_grad():
        ours = unet(x, t, ctx, same[None])

        class Fixed(torch.nn.Module):
            def forward(self, ids):
                return same[:1]

        stock_proj, unet.add_time_proj = unet.add_time_proj, Fixed()
        try:
            stock = UNetSpatioTemporalConditionModel.forward(
                unet, x, t, ctx, added_time_ids=torch.zeros(1, 3), return_dict=False
            )[0]
        finally:
            unet.add_time_proj = stock_proj
        per_frame = unet(x, t, ctx, cams[None])
    assert torch.allclose(ours, stock, atol=1e-5)
    assert (per_frame - ours).abs().max() > 1e-4


def test_sv3d_sampler_inputs(sv3d) -> None:
    """First UNet call: [uncond, cond] with zero CLIP token and zero concat latent, identical
    camera vectors, latents scaled by c_in; 21 frames out, the last one the input."""
    from pipelines.multiview.sv3d import camera_vectors

    img = pp.preprocess(PHOTOS / "Input_8.png", size=tm.SV3D_SIZE).image
    calls = []
    forward = sv3d.unet.forward

    def spy(sample, t, context, camera):
        calls.append((sample.clone(), t.clone(), context.clone(), camera.clone()))
        return forward(sample, t, context, camera)

    sv3d.unet.forward = spy
    try:
        out = sv3d(img, num_inference_steps=2, size=tm.SV3D_SIZE, seed=5, elevation_deg=10.0)
    finally:
        del sv3d.unet.forward
    assert len(calls) == 2
    sample, t, context, camera = calls[0]
    assert sample.shape == (2, 21, 8, 8, 8)
    assert torch.equal(sample[0, :, :4], sample[1, :, :4])
    assert not sample[0, :, 4:].any() and sample[1, :, 4:].abs().sum() > 0  # zero uncond concat
    assert torch.equal(sample[1, 0, 4:], sample[1, 20, 4:])  # the same latent in every frame
    assert not context[0].any() and context[1].abs().sum() > 0
    assert torch.equal(camera[0], camera[1])
    assert torch.allclose(camera[0].float(), camera_vectors(10.0), atol=1e-6)
    assert math.isclose(float(t[0]), 0.25 * math.log(700.0), rel_tol=1e-6)
    # initial latents ~ N(0, 1 + 700^2), times c_in = 1 / sqrt(1 + 700^2): unit variance
    assert 0.8 < float(sample[0, :, :4].std()) < 1.2
    assert out.frames.shape == (21, 3, tm.SV3D_SIZE, tm.SV3D_SIZE)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(out.frames[-1], x, atol=1e-6)
    again = sv3d(img, num_inference_steps=2, size=tm.SV3D_SIZE, seed=5)
    assert torch.equal(out.frames, again.frames)


def test_sv3d_resize_matches_kornia_style() -> None:
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing,
    )

    from pipelines.multiview.sv3d import resize_antialiased

    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(
        resize_antialiased(x, 40), _resize_with_antialiasing(x, (40, 40)), atol=1e-6
    )


def test_sv3d_bad_files(tmp_path) -> None:
    from pipelines.multiview.sv3d import SV3DPipeline

    with pytest.raises(InputError, match="no such file"):
        SV3DPipeline.from_pretrained(tmp_path / "missing.safetensors")
    junk = tmp_path / "sv3d_p.safetensors"
    junk.write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read the SV3D checkpoint"):
        SV3DPipeline.from_pretrained(junk)
