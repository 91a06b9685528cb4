"""G-Objaverse object folders and the NumPy EXR reader, on a fixture written from Spot."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from pipelines.cameras.dataparsers import gobjaverse as gob
from pipelines.cameras.dataparsers import load_transforms
from pipelines.cameras.dataparsers.exr import read_exr, write_exr
from pipelines.errors import InputError
from pipelines.train.occupancy import depth_points

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gobjaverse_spot"
SPOT = ROOT / "examples" / "spot"
DEPTH = ROOT / "tests" / "fixtures" / "spot_depth"  # all 21 training frames of Spot
#: fixture index -> Spot training frame (tests/fixtures/gobjaverse_spot/make_fixture.py)
VIEWS = {0: 0, 6: 5, 12: 11, 18: 16, 24: 1, 25: 20}
SCALE = 64 / 512


def _one_line(e: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_parse_gives_back_spots_cameras() -> None:
    obj = gob.parse_gobjaverse(FIXTURE)
    assert obj.indices == tuple(VIEWS)
    assert obj.orbit == (True, True, True, True, False, False)
    ref = load_transforms(SPOT / "transforms_train.json")
    frames = list(VIEWS.values())
    cams = obj.cameras
    assert (cams.width, cams.height) == (64, 64)
    assert torch.allclose(cams.c2w, ref.c2w[frames], atol=1e-5, rtol=0)
    K = ref.K[frames].clone()
    K[:, :2] *= SCALE  # fx, cx and fy, cy scale with the image
    assert torch.allclose(cams.K, K, atol=1e-5, rtol=1e-6)
    assert [p.name for p in cams.image_paths] == [f"{i:05d}.png" for i in VIEWS]
    assert [p.name for p in obj.depth_paths] == [f"{i:05d}_nd.exr" for i in VIEWS]
    assert torch.allclose(obj.camera_distances(), torch.full((6,), 1.5, dtype=torch.float64))
    assert gob.is_gobjaverse_object(FIXTURE) and not gob.is_gobjaverse_object(SPOT)


def test_renders_are_spots_views_downscaled() -> None:
    obj = gob.parse_gobjaverse(FIXTURE)
    for path, frame in zip(obj.cameras.image_paths, VIEWS.values(), strict=True):
        want = Image.open(SPOT / "train" / f"{frame:03d}.png").convert("RGBA")
        want = want.resize((64, 64), Image.Resampling.BOX)
        got = Image.open(path)
        assert got.mode == "RGBA"
        assert np.array_equal(np.asarray(got), np.asarray(want))


def _png_depth(frame: int) -> np.ndarray:
    """Spot's depth PNG of ``frame`` at the fixture's sampled pixels, in world units."""
    p = DEPTH / f"{frame:03d}_depth.png"
    return np.asarray(Image.open(p), dtype=np.float64)[4::8, 4::8] * 1e-4


def test_depth_matches_the_pngs() -> None:
    """The EXR holds the PNG's depth (16-bit, 1e-4 units) at the sampled pixels, within its
    quantisation; the official near test and 3x3 dilation drop the background's border."""
    obj = gob.parse_gobjaverse(FIXTURE)
    dist = obj.camera_distances()
    for k, (path, frame) in enumerate(zip(obj.depth_paths, VIEWS.values(), strict=True)):
        want = _png_depth(frame)
        raw = gob.read_gobjaverse_depth(path, erode_px=0)
        assert raw.dtype == np.float32 and raw.shape == (64, 64)
        assert np.abs(raw - want).max() < 0.5e-4
        assert np.array_equal(raw > 0, want > 0)
        official = gob.read_gobjaverse_depth(path, float(dist[k]))
        keep = ndimage.binary_erosion(want > 0, np.ones((3, 3), bool), border_value=1)
        assert np.array_equal(official > 0, keep)
        assert np.array_equal(official[keep], raw[keep])


def test_depth_lifts_onto_spots_surface() -> None:
    """The parsed cameras and depth together put the depth on Spot's surface samples: the
    flip, the focal length and camera-z depth agree."""
    obj = gob.parse_gobjaverse(FIXTURE)
    depth = np.stack([gob.read_gobjaverse_depth(p, erode_px=0) for p in obj.depth_paths])
    pts = depth_points(torch.from_numpy(depth), obj.cameras.c2w, obj.cameras.K)
    d, _ = cKDTree(np.load(SPOT / "points.npy")).query(pts.numpy())
    assert len(pts) > 3000
    assert np.median(d) < 0.005 and np.percentile(d, 95) < 0.02


def test_near_bound_and_invalid_values(tmp_path: Path) -> None:
    d = np.full((5, 5), 1.0, np.float32)
    d[0, 0] = 0.5  # nearer than 1.5 - 0.867: not on the object
    d[4, 4] = np.nan
    write_exr(tmp_path / "d.exr", {"A": d, "R": np.zeros_like(d)})
    got = gob.read_gobjaverse_depth(tmp_path / "d.exr", camera_distance=1.5, erode_px=0)
    assert got[0, 0] == 0 and got[4, 4] == 0 and (got > 0).sum() == 23
    got = gob.read_gobjaverse_depth(tmp_path / "d.exr", camera_distance=1.5)
    assert (got > 0).sum() == 25 - 4 - 4
    assert gob.read_gobjaverse_depth(tmp_path / "d.exr", erode_px=0)[0, 0] == 0.5


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "obj"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(tmp_path)
    _one_line(e, "no view folders")
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(tmp_path / "missing")
    _one_line(e, "not a folder")

    obj = _copy(tmp_path)
    (obj / "00006" / "00006.json").unlink()
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "00006", "no 00006.json")

    obj = _copy(tmp_path / "b")
    cam = json.loads((obj / "00000" / "00000.json").read_text())
    (obj / "00000" / "00000.json").write_text(json.dumps({**cam, "x": [1, 0]}))
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "00000.json", '"x"')
    (obj / "00000" / "00000.json").write_text(json.dumps({**cam, "x": [2, 0, 0]}))
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "orthonormal")
    (obj / "00000" / "00000.json").write_text(json.dumps({**cam, "x_fov": 30}))
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "x_fov", "radians")
    (obj / "00000" / "00000.json").write_text("{")
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "cannot read the camera")

    obj = _copy(tmp_path / "c")
    png = obj / "00012" / "00012.png"
    Image.open(png).convert("RGB").save(png)
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "00012.png", "RGBA")
    Image.new("RGBA", (32, 32)).save(png)
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "different sizes", "32x32", "64x64")

    obj = _copy(tmp_path / "d")
    (obj / "00024" / "00024_nd.exr").unlink()
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj)
    _one_line(e, "00024_nd.exr")
    for p in obj.glob("*/*_nd.exr"):
        p.unlink()
    assert gob.parse_gobjaverse(obj).depth_paths is None
    with pytest.raises(InputError) as e:
        gob.parse_gobjaverse(obj, require_depth=True)
    _one_line(e, "no _nd.exr")


# -- the EXR reader ---------------------------------------------------------------------------


def test_exr_reads_a_file_openexr_wrote() -> None:
    """CPython's test image, written by the OpenEXR library (HALF, no compression), against
    the same image as PNG: within half precision."""
    ch = read_exr(ROOT / "tests" / "fixtures" / "exr" / "python.exr")
    png = np.asarray(Image.open(ROOT / "tests" / "fixtures" / "exr" / "python.png").convert("RGBA"))
    assert sorted(ch) == ["A", "B", "G", "R"]
    for i, c in enumerate("RGBA"):
        assert ch[c].dtype == np.float16 and ch[c].shape == (16, 16)
        assert np.abs(ch[c].astype(np.float64) - png[..., i] / 255).max() < 5e-4


@pytest.mark.parametrize("compression", ["NONE", "ZIPS", "ZIP"])
def test_exr_round_trip(tmp_path: Path, compression: str) -> None:
    g = np.random.default_rng(0)
    h, w = 37, 5  # 37 rows: ZIP's 16-row chunks end with a short one
    ch = {
        "Z": g.standard_normal((h, w)).astype(np.float32),
        "A": g.standard_normal((h, w)).astype(np.float16),
        "id": g.integers(0, 2**32, (h, w), dtype=np.uint32),
        "flat": np.ones((h, w), np.float32),  # compresses: exercises the zlib path
    }
    write_exr(tmp_path / "x.exr", ch, compression)
    got = read_exr(tmp_path / "x.exr")
    assert sorted(got) == sorted(ch)
    for k, v in ch.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)


def test_exr_refusals(tmp_path: Path) -> None:
    (tmp_path / "a.exr").write_bytes(b"PNG not an exr")
    with pytest.raises(InputError) as e:
        read_exr(tmp_path / "a.exr")
    _one_line(e, "not an OpenEXR file")
    write_exr(tmp_path / "b.exr", {"A": np.ones((4, 4), np.float32)}, "NONE")
    buf = bytearray((tmp_path / "b.exr").read_bytes())
    tiled = buf.copy()
    tiled[4:8] = struct.pack("<i", 2 | 0x200)
    (tmp_path / "t.exr").write_bytes(bytes(tiled))
    with pytest.raises(InputError) as e:
        read_exr(tmp_path / "t.exr")
    _one_line(e, "tiled", "oiiotool")
    piz = buf.copy()
    i = piz.index(b"compression\0compression\0") + len(b"compression\0compression\0") + 4
    piz[i] = 4
    (tmp_path / "p.exr").write_bytes(bytes(piz))
    with pytest.raises(InputError) as e:
        read_exr(tmp_path / "p.exr")
    _one_line(e, "PIZ", "zip")
    (tmp_path / "c.exr").write_bytes(bytes(buf[:-10]))
    with pytest.raises(InputError) as e:
        read_exr(tmp_path / "c.exr")
    _one_line(e, "truncated")
