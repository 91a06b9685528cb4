"""``preprocess`` against the official GeoLRM scripts, with the REAL ``rembg.remove`` (its
cut-out and pymatting's alpha matting run) and a stand-in for the segmentation network only
(u2net cannot be downloaded here): a session whose ``predict`` returns a known soft mask, the
way ``rembg.remove`` uses ``session.predict(img)`` (rembg 2.0.86 ``bg.py:326``).

Each reference below writes out the official steps with PIL / numpy; references are to
alibaba-yuanjing-aigclab/GeoLRM @ da3f30fb (``GEO``) and the installed rembg 2.0.86.

rembg's import takes about a minute the first time (numba compiles pymatting, cached in the
venv afterwards) and ~3 s later: it happens once, in the module fixture ``rembg``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from pipelines import preprocess as pp

F = np.array([220.0, 60.0, 40.0])  # object colour
B = np.array([40.0, 110.0, 200.0])  # photo background


@pytest.fixture(scope="module")
def rembg():
    t0 = time.perf_counter()
    mod = pytest.importorskip("rembg")
    print(f"import rembg: {time.perf_counter() - t0:.1f} s")
    return mod


class StubSession:
    """Stands in for rembg's u2net session: ``predict`` returns ``[mask_fn(w, h)]`` and
    records the mode and size of every image it is given."""

    def __init__(self, mask_fn):
        self.mask_fn = mask_fn
        self.calls: list[tuple[str, tuple[int, int]]] = []

    def predict(self, img, *args, **kwargs):
        self.calls.append((img.mode, img.size))
        return [Image.fromarray(self.mask_fn(*img.size), "L")]


@pytest.fixture
def stub(tmp_path, monkeypatch):
    """``stub(mask_fn)`` -> a StubSession that preprocess uses as the 'u2net' session."""
    home = tmp_path / "u2net"
    home.mkdir()
    (home / "u2net.onnx").write_bytes(b"stub")
    monkeypatch.setenv("U2NET_HOME", str(home))

    def make(mask_fn):
        session = StubSession(mask_fn)
        monkeypatch.setattr(pp, "_SESSIONS", {"u2net": session})
        return session

    return make


def disk_alpha(w: int, h: int, radius: float = 0.3, ramp: float = 0.02) -> np.ndarray:
    """Soft disk, float alpha in [0, 1]; radius and ramp relative to the image width."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r = np.hypot(xx - 0.45 * w, yy - 0.5 * h) / w
    return np.clip((radius - r) / ramp + 0.5, 0.0, 1.0)


def disk_photo(w: int, h: int) -> Image.Image:
    """F on B through :func:`disk_alpha` (what a camera sees at the object's edge)."""
    a = disk_alpha(w, h)[..., None]
    return Image.fromarray((F * a + B * (1 - a) + 0.5).astype(np.uint8), "RGB")


def disk_mask(w: int, h: int) -> np.ndarray:
    """The 'network' mask: the disk, slightly too wide (a real estimate is not exact)."""
    return (disk_alpha(w, h, radius=0.305) * 255 + 0.5).astype(np.uint8)


# --- the official steps, written out ---------------------------------------------------------


def official_resize_foreground(rgba: Image.Image, ratio: float = 0.85) -> Image.Image:
    """GEO src/utils/infer_util.py:25-63."""
    a = np.array(rgba)
    ys, xs = np.where(a[..., 3] > 0)  # :31
    fg = a[ys.min() : ys.max(), xs.min() : xs.max()]  # :32-39 (max excluded)
    size = max(fg.shape[0], fg.shape[1])  # :41
    ph0, pw0 = (size - fg.shape[0]) // 2, (size - fg.shape[1]) // 2
    ph1, pw1 = size - fg.shape[0] - ph0, size - fg.shape[1] - pw0
    sq = np.pad(fg, ((ph0, ph1), (pw0, pw1), (0, 0)))  # :44-49
    new = int(sq.shape[0] / ratio)  # :52
    p0 = (new - size) // 2
    p1 = new - size - p0
    return Image.fromarray(np.pad(sq, ((p0, p1), (p0, p1), (0, 0))))  # :54-62


def official_to_rgb_image(im: Image.Image, bg: int = 255) -> Image.Image:
    """GEO zero123plus/pipeline.py:30-38 (white 255 at :35)."""
    if im.mode == "RGB":
        return im
    out = Image.fromarray(np.full((im.size[1], im.size[0], 3), bg, np.uint8), "RGB")
    out.paste(im, mask=im.getchannel("A"))
    return out


def official_vae_processor(im: Image.Image, size: int = 512) -> Image.Image:
    """feature_extractor_vae (shortest_edge 512, crop 512, resample 2 = bilinear) through
    transformers' get_resize_output_image_size (long = int(size * long / short)) and
    center_crop (offsets floored)."""
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return im.crop((left, top, left + size, top + size))


def official_sv3d(image: Image.Image, session, rembg, size: int = 576) -> Image.Image:
    """GEO sv3d_video_sample.py:133-165 (the thumbnail and rembg only for a non-RGBA image)."""
    if image.mode != "RGBA":
        image = image.copy()
        image.thumbnail([768, 768], Image.Resampling.LANCZOS)  # :138
        image = rembg.remove(image.convert("RGBA"), session=session, alpha_matting=True)  # :139
    arr = np.array(image)
    ys, xs = np.where(arr[..., 3] > 0)  # :144-147: threshold 0, boundingRect
    x, y = xs.min(), ys.min()
    w, h = xs.max() - x + 1, ys.max() - y + 1
    side = int(max(w, h) / 0.85)  # :148-153
    pad = np.zeros((side, side, 4), np.uint8)
    c = side // 2
    pad[c - h // 2 : c - h // 2 + h, c - w // 2 : c - w // 2 + w] = arr[y : y + h, x : x + w]
    rgba = Image.fromarray(pad).resize((size, size), Image.LANCZOS)  # :161
    x = np.array(rgba) / 255.0  # :163-165
    rgb = x[..., :3] * x[..., -1:] + (1 - x[..., -1:])
    return Image.fromarray((rgb * 255).astype(np.uint8))


# --- item 4: rembg's premultiplied cut-out, composited again ----------------------------------


def test_zero123pp_rembg_edges_are_multiplied_twice(rembg, stub) -> None:
    """GEO run_geolrm_zero123.py:137-138 runs plain ``rembg.remove`` (its ``naive_cutout``,
    rembg bg.py:99-112, composites the photo with an empty image through the mask: colour x
    mask) and ``resize_foreground``; the pipeline's ``to_rgb_image`` (GEO
    zero123plus/pipeline.py:35-37) pastes that on white through the alpha again. An edge pixel
    of colour c with mask a comes out as c*a*a + 255*(1 - a), not c*a + 255*(1 - a)."""
    c = np.array([200, 100, 40])

    def mask(w, h):
        m = np.zeros((h, w), np.uint8)
        m[26:74, 26:74] = 128  # a 4 px ring of mask 128 ...
        m[30:70, 30:70] = 255  # ... around an opaque core
        return m

    session = stub(mask)
    photo = Image.new("RGB", (100, 100), tuple(int(v) for v in c))
    # framed side int(47 / 0.85) = 55 (infer_util.py:52): size 55 leaves the pixels unresized
    res = pp.preprocess(photo, size=55, alpha_threshold=0)
    assert session.calls == [("RGB", (100, 100))]  # the photo itself, no thumbnail
    assert res.alpha_source == "rembg:u2net" and res.style == "zero123pp"
    out = np.asarray(res.image).astype(int)
    a = 128 / 255
    # the ring's top-left pixel: crop starts at 26, padding (55 - 47) // 2 = 4
    edge = out[4, 4]
    assert (np.abs(edge - (c * a * a + 255 * (1 - a))) <= 1).all(), edge
    assert tuple(edge) == (177, 152, 137)  # PIL's rounded arithmetic, twice
    assert (np.abs(edge - (c * a + 255 * (1 - a))) > 20).any()  # not straight alpha
    assert tuple(out[20, 20]) == tuple(c)  # the opaque core keeps its colour
    assert tuple(out[0, 0]) == (255, 255, 255)

    # the whole 512 px VAE input equals the official chain written out
    res = pp.preprocess(photo, alpha_threshold=0)
    cut = rembg.remove(photo, session=session)  # run_geolrm_zero123.py:137
    ref = official_vae_processor(official_to_rgb_image(official_resize_foreground(cut)))
    assert res.image.size == (512, 512)
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))
    assert np.array_equal(
        np.asarray(res.condition),
        np.asarray(official_to_rgb_image(official_resize_foreground(cut))),
    )


def test_zero123pp_input_alpha_is_composited_once(stub) -> None:
    """An RGBA photo with transparency skips rembg (GEO src/utils/infer_util.py:17-18) and
    keeps its straight colours: one paste on white (zero123plus/pipeline.py:37)."""

    def no_call(w, h):  # pragma: no cover - must not run
        raise AssertionError("rembg ran on an RGBA photo")

    stub(no_call)
    a = np.zeros((60, 80, 4), np.uint8)
    a[10:50, 20:60] = (200, 100, 40, 128)
    a[20:40, 30:50] = (200, 100, 40, 255)
    rgba = Image.fromarray(a, "RGBA")
    res = pp.preprocess(rgba, alpha_threshold=0)
    assert res.alpha_source == "input"
    ref = official_vae_processor(official_to_rgb_image(official_resize_foreground(rgba)))
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))
    edge = np.asarray(res.condition)[3, 3].astype(int)  # a = 128/255: c*a + 255*(1 - a)
    assert (np.abs(edge - (np.array([200, 100, 40]) * 128 / 255 + 127)) <= 1).all(), edge


# --- item 3: SV3D's alpha matting on a 768 px thumbnail ---------------------------------------


def test_sv3d_thumbnail_then_alpha_matting(rembg, stub) -> None:
    """GEO sv3d_video_sample.py:138-139: ``image.thumbnail([768, 768], LANCZOS)`` then
    ``remove(image.convert("RGBA"), alpha_matting=True)``; the returned RGBA (pymatting's alpha
    and estimated foreground colours, rembg bg.py:46-96) is framed (:144-159), resized to 576
    (:161) and put on white once (:163-165). The Zero123++ path does not matte."""
    photo = disk_photo(1600, 1000)
    session = stub(disk_mask)
    res = pp.preprocess(photo, size=576, style="sv3d", alpha_threshold=0)
    assert session.calls == [("RGBA", (768, 480))]  # thumbnailed before rembg
    ref = official_sv3d(photo, session, rembg)
    assert res.image.size == (576, 576)
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))
    assert res.condition is res.image

    # the soft edge keeps matting's foreground estimate: close to F, neither the photo's
    # blend of F and B nor F premultiplied by alpha
    x = np.asarray(res.rgba).astype(float)
    edge = (x[..., 3] > 60) & (x[..., 3] < 190)
    assert edge.sum() > 100
    rgb, a = x[..., :3][edge], x[..., 3][edge, None] / 255
    assert np.median(np.abs(rgb - F).max(axis=1)) < 25
    assert np.median(np.abs(rgb - F * a).max(axis=1)) > 40
    assert np.median(np.abs(rgb - (F * a + B * (1 - a))).max(axis=1)) > 40

    # Zero123++ on the same photo: the full photo, plain rembg, alpha = the network's mask
    session.calls.clear()
    z = pp.preprocess(photo, style="zero123pp", alpha_threshold=0)
    assert session.calls == [("RGB", (1600, 1000))]
    cut = pp.remove_background(photo)
    assert np.array_equal(np.asarray(cut)[..., 3], disk_mask(1600, 1000))
    ref = official_vae_processor(official_to_rgb_image(official_resize_foreground(cut)))
    assert np.array_equal(np.asarray(z.image), np.asarray(ref))


def test_sv3d_input_alpha_skips_rembg(stub) -> None:
    """GEO sv3d_video_sample.py:134-135: an RGBA photo is used as is (no thumbnail, no rembg)."""

    def no_call(w, h):  # pragma: no cover - must not run
        raise AssertionError("rembg ran on an RGBA photo")

    stub(no_call)
    a = np.zeros((900, 1000, 4), np.uint8)
    a[100:700, 200:900] = (200, 100, 40, 255)
    a[90:100, 200:900, 3] = 100
    rgba = Image.fromarray(a, "RGBA")
    res = pp.preprocess(rgba, size=576, style="sv3d", alpha_threshold=0)
    assert res.alpha_source == "input" and res.bbox == (200, 90, 900, 700)
    ref = official_sv3d(rgba, None, None)
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))


# --- item 5: --no-rembg uses the photo as is -------------------------------------------------


def _noise_photo(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_no_rembg_is_shortest_edge_and_centre_crop(monkeypatch) -> None:
    """GEO run_geolrm_zero123.py:136-138: with ``--no_rembg`` neither rembg nor
    ``resize_foreground`` runs; the pipeline's processor (zero123plus/pipeline.py:347,
    feature_extractor_vae: shortest_edge 512, bilinear, centre crop 512) resizes the 300x200
    photo to 768x512 and keeps the centre 512x512, i.e. the centre 200x200 of the photo.
    SV3D (no such option in sv3d_video_sample.py) does the same at 576 with its Lanczos."""

    def no_rembg(*_a, **_k):  # pragma: no cover - must not run
        raise AssertionError("rembg ran with remove_bg=False")

    monkeypatch.setattr(pp, "_rembg_session", no_rembg)
    photo = _noise_photo(300, 200)
    res = pp.preprocess(photo, remove_bg=False)
    ref = photo.resize((768, 512), Image.Resampling.BILINEAR).crop((128, 0, 640, 512))
    assert res.alpha_source == "none" and res.bbox == (50, 0, 250, 200)
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))
    assert np.asarray(res.rgba)[..., 3].min() == 255  # no white margin: the photo fills it

    res = pp.preprocess(photo, size=576, remove_bg=False, style="sv3d")
    ref = photo.resize((864, 576), Image.Resampling.LANCZOS).crop((144, 0, 720, 576))
    assert res.bbox == (50, 0, 250, 200)
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))

    # a portrait photo with an odd long edge: 200x301 -> 512x770, top offset (770-512)//2
    tall = _noise_photo(200, 301)
    res = pp.preprocess(tall, remove_bg=False)
    ref = tall.resize((512, 770), Image.Resampling.BILINEAR).crop((0, 129, 512, 641))
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))


def test_no_rembg_rgba_is_pasted_not_framed() -> None:
    """GEO run_geolrm_zero123.py:136-144: ``--no_rembg`` hands an RGBA photo to the pipeline
    unframed; ``to_rgb_image`` (zero123plus/pipeline.py:33-38) pastes it on white, then the
    processor resizes / crops it."""
    a = np.zeros((200, 300, 4), np.uint8)
    a[80:120, 140:160] = (200, 100, 40, 255)
    rgba = Image.fromarray(a, "RGBA")
    res = pp.preprocess(rgba, remove_bg=False)
    assert res.alpha_source == "input"
    ref = official_vae_processor(official_to_rgb_image(rgba))
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))
