"""Training data: finding objects, samples (recon's frames and images), occupancy cache, order.

On Spot, assembled whole in a temporary folder from the repository's files: ``examples/spot``
(21 training views of 512 px each, 12 test views, the cameras, ``points.npy``) and
``tests/fixtures/spot_depth`` (the 21 views' 16-bit depth PNGs, which the example does not ship),
and on the G-Objaverse fixture ``tests/fixtures/gobjaverse_spot``; at small sizes. Every object
the tests read is a copy, so nothing (an occupancy cache, a chmod, a rewritten ``points.npy``) is
ever written into the repository: the module's folder of objects (``spot``, a second copy of it
named ``cow``, and the G-Objaverse fixture) is shared by the tests and only read
(``cache=False`` or ``occupancy=False``); tests that cache or change an object copy it into
their own ``tmp_path`` first.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import cKDTree
from train_support import copy_spot as _copy_spot

from pipelines.cameras.images import load_views
from pipelines.cameras.similarity import apply_similarity, decompose_similarity
from pipelines.errors import InputError, Note
from pipelines.optimize.photometric import backproject
from pipelines.reconstruct import prepare_views
from pipelines.scene import is_identity
from pipelines.train import data as D
from pipelines.train.occupancy import occupancy_grid, occupancy_iou

ROOT = Path(__file__).resolve().parents[1]
GOBJ = ROOT / "tests" / "fixtures" / "gobjaverse_spot"
S = 56
G = 64


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three objects: ``cow`` and ``spot`` (two copies of Spot whole) and
    ``gobjaverse_spot`` (a copy of the G-Objaverse fixture). Only read: no occupancy cache."""
    root = tmp_path_factory.mktemp("objects")
    _copy_spot(root / "spot")
    _copy_spot(root / "cow")
    shutil.copytree(GOBJ, root / GOBJ.name)
    return root


@pytest.fixture(scope="module")
def spot_dir(objects: Path) -> Path:
    """Spot's folder (in :func:`objects`)."""
    return objects / "spot"


@pytest.fixture(scope="module")
def gobj(objects: Path) -> Path:
    """The G-Objaverse fixture's copy (in :func:`objects`)."""
    return objects / GOBJ.name


def _spot(spot: Path) -> D.TrainObject:
    return D.find_objects([spot])[0]


def _frames_json(spot: Path, path: Path, frames: list[dict], **top) -> Path:
    meta = json.loads((spot / "transforms_train.json").read_text())
    meta = {k: v for k, v in meta.items() if k != "frames"} | top
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta | {"frames": frames}))
    return path


def _spot_frames(spot: Path, n: int) -> list[dict]:
    """The first ``n`` frames of spot, image paths made absolute (no copy needed), no depth."""
    meta = json.loads((spot / "transforms_train.json").read_text())
    out = []
    for f in meta["frames"][:n]:
        f = dict(f)
        f["file_path"] = str(spot / f["file_path"])
        f.pop("depth_file_path")
        out.append(f)
    return out


# -- find_objects ------------------------------------------------------------------------------


def test_find_objects_folder_single_and_layouts(objects: Path, spot_dir: Path, gobj: Path) -> None:
    objs = D.find_objects([objects])  # sorted by name; each object in its own layout
    assert [o.name for o in objs] == ["cow", "gobjaverse_spot", "spot"]
    assert [o.layout for o in objs] == ["transforms", "gobjaverse", "transforms"]
    assert [o.root for o in objs] == [objects / o.name for o in objs]
    for o in (objs[0], objs[2]):
        assert len(o.cameras) == 21 and o.depth_scale == 1e-4
        assert o.surface == o.root / "points.npy" and len(o.depth_paths) == 21
        # each object's files are its own folder's, not the first copy's
        assert o.depth_paths[3] == o.root / "train" / "003_depth.png"
        assert o.cameras.image_paths[3] == o.root / "train" / "003.png"
    assert objs[1].root == gobj and len(objs[1].cameras) == 6 and objs[1].surface is None
    one = D.find_objects([spot_dir / "transforms_train.json"])
    assert [o.name for o in one] == ["spot"]
    test = D.find_objects([spot_dir], split="test")[0]
    assert len(test.cameras) == 12 and test.depth_paths is None and test.depth_scale is None
    # the same object twice gets a unique name; the G-Objaverse fixture is read in its layout
    both = D.find_objects([spot_dir, spot_dir, gobj])
    assert [o.name for o in both] == ["spot", "spot-2", "gobjaverse_spot"]
    g = both[2]
    assert g.layout == "gobjaverse" and len(g.cameras) == 6 and g.depth_scale is None
    assert [p.name for p in g.depth_paths][:2] == ["00000_nd.exr", "00006_nd.exr"]


def test_find_objects_bad_data_skipped_then_refused(tmp_path: Path, spot_dir: Path) -> None:
    data = tmp_path / "data"
    _frames_json(spot_dir, data / "good" / "transforms_train.json", _spot_frames(spot_dir, 3))
    (data / "nocams" / "train").mkdir(parents=True)  # views without cameras
    shutil.copy(spot_dir / "train" / "000.png", data / "nocams" / "train")
    _frames_json(
        spot_dir, data / "mismatch" / "transforms.json", _spot_frames(spot_dir, 2), w=512, h=256
    )
    rgb = data / "noalpha" / "000.png"
    rgb.parent.mkdir(parents=True)
    Image.open(spot_dir / "train" / "000.png").convert("RGB").save(rgb)
    frames = _spot_frames(spot_dir, 2)
    frames[1]["file_path"] = "000.png"
    _frames_json(spot_dir, data / "noalpha" / "transforms.json", frames)
    (data / ".hidden").mkdir()  # ignored
    (tmp_path / "empty").mkdir()
    skipped: list[tuple[Path, str]] = []
    objs = D.find_objects([data, tmp_path / "empty"], on_skip=lambda p, r: skipped.append((p, r)))
    assert [o.name for o in objs] == ["good"] and len(objs[0].cameras) == 3
    assert objs[0].depth_paths is None and objs[0].surface is None
    reasons = {p.name: r for p, r in skipped}
    assert sorted(reasons) == ["empty", "mismatch", "noalpha", "nocams"]
    assert all("\n" not in r for r in reasons.values())
    assert "no transforms_train.json or transforms.json" in reasons["nocams"]
    assert "image is 512x512 but its camera says 512x256" in reasons["mismatch"]
    assert "no alpha channel" in reasons["noalpha"] and "000.png" in reasons["noalpha"]
    assert "empty folder" in reasons["empty"]
    # default report: one note per skipped object
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        D.find_objects([data])
    assert sum(issubclass(x.category, Note) for x in w) == 3
    with pytest.raises(InputError, match="no usable training objects in .*empty.*; give folders"):
        D.find_objects([data / "nocams", tmp_path / "empty"], on_skip=lambda p, r: None)
    with pytest.raises(InputError, match="transforms_test.json"):
        D.find_objects([data / "good"], split="test", on_skip=lambda p, r: None)


# -- samples -----------------------------------------------------------------------------------


def test_sample_shapes_and_recon_frames(spot_dir: Path) -> None:
    spot = _spot(spot_dir)
    counts = D.ViewCounts(inputs=(1, 5), targets=3)
    ds = D.TrainDataset([spot], S, counts, seed=3, grid_size=G, cache=False)
    for n in (1, 4):  # one view: a tilted, non-identity frame; several: M = I for this rig
        s = ds[(0, n, 11)]
        shapes = {k: tuple(v.shape) for k, v in s.items()}
        assert shapes == {
            "input_images": (n, 3, S, S), "input_c2ws": (n, 4, 4), "input_Ks": (n, 3, 3),
            "target_rgb": (3, 3, S, S), "target_alpha": (3, 1, S, S),
            "target_depth": (3, 1, S, S), "target_c2ws": (3, 4, 4), "target_Ks": (3, 3, 3),
            "has_depth": (), "background": (3,), "object_index": (), "sample_id": (),
            "input_views": (n,), "target_views": (3,), "occupancy": (G, G, G),
        }  # fmt: skip
        for k in ("input_images", "target_rgb", "target_alpha", "background"):
            assert s[k].dtype == torch.float32 and 0 <= s[k].min() and s[k].max() <= 1, k
        assert s["occupancy"].dtype == torch.bool and 0 < int(s["occupancy"].sum()) < G**3
        assert bool(s["has_depth"]) and int(s["sample_id"]) == 11 and int(s["object_index"]) == 0
        # inputs: exactly recon's prepare_views (load_views + to_model_frame) of those views
        prep = prepare_views(spot.cameras.subset(s["input_views"]), S)
        assert torch.equal(s["input_images"], prep.images)
        assert torch.equal(s["input_c2ws"], prep.cameras_model.c2w)
        assert torch.equal(s["input_Ks"], prep.cameras_model.normalized_K())
        assert is_identity(prep.model_from_user) == (n > 1)
        # targets: the same frame; straight colour composited on white = recon's load of them
        tv = spot.cameras.subset(s["target_views"])
        white, used = load_views(tv, S)
        m = prep.model_from_user
        want = used.clone() if n > 1 else used.transformed(m)
        assert torch.equal(s["target_c2ws"], want.c2w)
        assert torch.equal(s["target_Ks"], want.normalized_K())
        a = s["target_alpha"]
        comp = s["target_rgb"] * a + (1 - a)
        # equal up to bicubic ringing clamped at the silhouette (measured at 56 px: mean
        # 1.3e-5, 0.06% of the pixels off by more than 0.01, at most 0.025)
        err = (comp - white).abs()
        assert err.mean() < 5e-5 and (err > 0.01).float().mean() < 0.002 and err.max() < 0.05
        assert (
            0.02 < float(a.mean()) < 0.5
            and float(s["target_rgb"][(a == 0).expand(-1, 3, -1, -1)].abs().max()) == 0
        )


def test_depth_in_the_model_frame(tmp_path: Path, spot_dir: Path) -> None:
    """Spot's world scaled by 2 (camera centres and depth unit): the model frame scales it back
    by 0.5, the depth with it, and the depth lifted through the target cameras lies on
    ``M (2 points)``."""
    meta = json.loads((spot_dir / "transforms_train.json").read_text())
    for f in meta["frames"]:
        for key in ("file_path", "depth_file_path"):
            f[key] = str(spot_dir / f[key])
        for row in f["transform_matrix"][:3]:
            row[3] *= 2
    meta["depth_unit_scale_factor"] *= 2
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "transforms.json").write_text(json.dumps(meta))
    big, spot = D.find_objects([tmp_path / "big", spot_dir])
    counts = D.ViewCounts((3, 3), 3)
    s = D.TrainDataset([big], S, counts, occupancy=False, cache=False)[(0, 3, 7)]
    ref = D.TrainDataset([spot], S, counts, occupancy=False, cache=False)[(0, 3, 7)]
    m = prepare_views(big.cameras.subset(s["input_views"]), S).model_from_user
    scale = decompose_similarity(m)[0]
    assert scale == pytest.approx(0.5, rel=1e-5)
    assert torch.allclose(s["target_depth"], ref["target_depth"], rtol=1e-5, atol=0)
    assert float((s["target_depth"] > 0).float().mean()) > 0.05
    surface = torch.from_numpy(np.load(spot.surface)).double() * 2
    surface = apply_similarity(m, surface).numpy()
    K = s["target_Ks"].double() * torch.tensor([S, S, 1.0], dtype=torch.float64)[:, None]
    pts = []
    for v in range(3):
        d = s["target_depth"][v, 0].double()
        lifted = backproject(d, s["target_c2ws"][v].double(), K[v])
        pts.append(lifted[d > 0].numpy())
    dist, _ = cKDTree(surface).query(np.concatenate(pts))
    # samples ~4 mm apart, nearest-neighbour depth at 56 px: within a few mm of the surface
    assert np.median(dist) < 0.003 and np.percentile(dist, 95) < 0.01, np.percentile(dist, [50, 95])


def test_determinism_and_view_choice(spot_dir: Path, gobj: Path) -> None:
    spot = _spot(spot_dir)
    counts = D.ViewCounts(inputs=(2, 7), targets=4)
    a = D.TrainDataset([spot], S, counts, seed=5, occupancy=False, cache=False)
    b = D.TrainDataset([spot], S, counts, seed=5, occupancy=False, cache=False)
    b[(0, 3, 99)]  # another order and cache state
    sa, sb = a[(0, 6, 42)], b[(0, 6, 42)]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [t.tolist() for t in a.views((0, 6, 42))] == [
        sa["input_views"].tolist(),
        sa["target_views"].tolist(),
    ]
    assert len({tuple(a.views((0, 7, i))[0].tolist()) for i in range(8)}) == 8
    other = D.TrainDataset([spot], S, counts, seed=6, occupancy=False, cache=False)
    assert not torch.equal(other.views((0, 6, 42))[0], sa["input_views"])
    for i in range(50):
        n = 2 + i % 6
        vi, vt = (set(t.tolist()) for t in a.views((0, n, i)))
        assert len(vi) == n and len(vt) == 4 and not vi & vt  # 21 views: enough for both
    with pytest.raises(ValueError, match="n_inputs 8 outside"):
        a[(0, 8, 0)]
    # the 6-view G-Objaverse fixture: 5 inputs + 4 targets repeat views, shapes hold
    g = D.find_objects([gobj])
    ds = D.TrainDataset(g, S, D.ViewCounts((1, 5), 4), occupancy=False, cache=False)
    s = ds[(0, 5, 0)]
    assert len(set(s["input_views"].tolist())) == 5 and s["target_depth"].shape == (4, 1, S, S)
    assert set(s["target_views"].tolist()) >= set(range(6)) - set(s["input_views"].tolist())
    assert float(s["target_depth"].max()) > 1.0 and bool(s["has_depth"])


def test_dataloader_batches(objects: Path) -> None:
    objs = D.find_objects([objects])  # 512 px and 64 px views (both layouts) in one batch
    ds = D.TrainDataset(objs, S, D.ViewCounts((1, 3), 2), seed=1, occupancy=False, cache=False)
    sampler = D.StepSampler(len(ds), 3, ds.counts, seed=1, length=2)
    batches = list(torch.utils.data.DataLoader(ds, batch_sampler=sampler))
    assert len(batches) == 2
    for i, batch in enumerate(batches):
        n = sampler.n_inputs(i)
        assert batch["input_images"].shape == (3, n, 3, S, S)
        assert batch["sample_id"].tolist() == [3 * i, 3 * i + 1, 3 * i + 2]


# -- occupancy ---------------------------------------------------------------------------------


def test_occupancy_depth_vs_points_and_cache(tmp_path: Path, spot_dir: Path) -> None:
    G = 128
    solid_obj = D.find_objects([_copy_spot(tmp_path / "solid")])[0]
    depth_obj = D.find_objects([_copy_spot(tmp_path / "depth", points=False)])[0]
    assert solid_obj.surface is not None and depth_obj.surface is None
    surf = D.object_occupancy(solid_obj, G)
    fused = D.object_occupancy(depth_obj, G)
    assert surf.source == "surface" and surf.solid is not None
    assert fused.source == "depth" and fused.solid is None
    points = torch.from_numpy(np.load(spot_dir / "points.npy")).double()
    shell = occupancy_grid(points, G)
    from_depth = occupancy_grid(torch.from_numpy(fused.points).double(), G)
    # measured 0.775 (21 views from 10-40 deg elevation; the underside is never seen)
    assert occupancy_iou(from_depth, shell) > 0.72
    solid = occupancy_grid(torch.from_numpy(surf.points).double(), G, solid=surf.solid)
    assert torch.equal(surf.occupancy(G), solid)  # the own frame's grid, cached with the rest
    assert torch.equal(fused.occupancy(G), from_depth)
    assert int(solid.sum()) > 5 * int(shell.sum()) and bool((solid | ~shell).all())
    # cached beside each object, reused, replaced when an input changes
    files = list((solid_obj.root / D.CACHE_DIR).glob("occupancy-*.npz"))
    assert len(files) == 1 and len(list((depth_obj.root / D.CACHE_DIR).glob("*.npz"))) == 1
    before = files[0].stat().st_mtime_ns
    calls = []
    real = D._compute_occupancy

    def counted(*args):
        calls.append(args)
        return real(*args)

    D._compute_occupancy = counted
    try:
        again = D.object_occupancy(solid_obj, G)
        assert calls == [] and files[0].stat().st_mtime_ns == before
        assert np.array_equal(again.points, surf.points)
        assert np.array_equal(again.solid.inside, surf.solid.inside)
        pts = np.load(solid_obj.surface)
        np.save(solid_obj.surface, pts[: len(pts) // 2])
        half = D.object_occupancy(solid_obj, G)
        assert len(calls) == 1 and len(half.points) == len(pts) // 2
        now = list((solid_obj.root / D.CACHE_DIR).glob("occupancy-*.npz"))
        assert len(now) == 1 and now != files
    finally:
        D._compute_occupancy = real


def test_occupancy_read_only_folder_kept_in_memory(tmp_path: Path) -> None:
    obj = D.find_objects([_copy_spot(tmp_path / "ro")])[0]
    obj.root.chmod(0o555)
    try:
        ds = D.TrainDataset([obj], S, D.ViewCounts((2, 2), 1), grid_size=32)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ds.prepare()
            s = ds[(0, 2, 0)]
        assert not (obj.root / D.CACHE_DIR).exists()
        assert [str(x.message) for x in w if issubclass(x.category, Note)] == [
            f"{obj.root}: cannot cache the occupancy (the folder is read-only); kept in memory only"
        ]
        assert float(s["occupancy"].sum()) > 0
    finally:
        obj.root.chmod(0o755)


def test_occupancy_follows_the_model_frame(spot_dir: Path) -> None:
    spot = _spot(spot_dir)
    ds = D.TrainDataset([spot], S, D.ViewCounts((1, 2), 1), grid_size=G, cache=False)
    one = ds[(0, 1, 4)]  # one input view: its own frame
    prep = prepare_views(spot.cameras.subset(one["input_views"]), S)
    src = ds._occupancy_source(0)
    want = occupancy_grid(
        torch.from_numpy(src.points).double(), G, to_model=prep.model_from_user, solid=src.solid
    )
    assert torch.equal(one["occupancy"], want)
    two = ds[(0, 2, 4)]
    assert occupancy_iou(two["occupancy"], one["occupancy"]) < 0.9  # another frame


def test_object_without_occupancy_source_refused(tmp_path: Path, spot_dir: Path) -> None:
    path = _frames_json(spot_dir, tmp_path / "o" / "transforms.json", _spot_frames(spot_dir, 2))
    obj = D.find_objects([path])[0]
    with pytest.raises(InputError, match="no depth maps and no points.npy / mesh"):
        D.TrainDataset([obj], S)
    D.TrainDataset([obj], S, D.ViewCounts((1, 1), 1), occupancy=False)[(0, 1, 0)]


# -- sampling order ----------------------------------------------------------------------------


def test_step_sampler_pure_resumable_and_ddp() -> None:
    counts = D.ViewCounts((1, 7), 4)
    one = D.StepSampler(5, 4, counts, seed=9, length=30)
    batches = list(one)
    assert len(batches) == 30 and len(one) == 30
    assert batches == list(D.StepSampler(5, 4, counts, seed=9, length=30))
    assert batches != list(D.StepSampler(5, 4, counts, seed=10, length=30))
    # resume: start=k continues the same sequence, in O(1)
    assert list(D.StepSampler(5, 4, counts, seed=9, start=17, length=13)) == batches[17:]
    assert D.StepSampler(5, 4, counts, seed=9, start=10**9, length=1).batch(10**9)
    ns = set()
    for i, b in enumerate(batches):
        assert len({k[1] for k in b}) == 1 and 1 <= b[0][1] <= 7  # one n_inputs per batch
        ns.add(b[0][1])
        assert [k[2] for k in b] == list(range(4 * i, 4 * i + 4))
    assert len(ns) >= 5
    # objects: a permutation per epoch (every 5 consecutive samples cover all 5 objects)
    flat = [k[0] for b in batches for k in b]
    for e in range(len(flat) // 5):
        assert sorted(flat[5 * e : 5 * e + 5]) == [0, 1, 2, 3, 4]
    assert flat[:5] != flat[5:10] or flat[5:10] != flat[10:15]
    # DDP: 2 ranks x batch 2 = 1 process x batch 4
    ranks = [list(D.StepSampler(5, 2, counts, seed=9, length=30, rank=r, world=2)) for r in (0, 1)]
    for i in range(30):
        assert ranks[0][i] + ranks[1][i] == batches[i]
    with pytest.raises(TypeError):
        len(D.StepSampler(5, 4, counts))
    it = iter(D.StepSampler(5, 4, counts, seed=9))
    assert [next(it) for _ in range(3)] == batches[:3]


def test_view_counts_checked(gobj: Path) -> None:
    with pytest.raises(InputError, match="need 1 <= min <= max <= 32"):
        D.ViewCounts((0, 3))
    with pytest.raises(InputError, match="need 1 <= min <= max"):
        D.ViewCounts((4, 3))
    with pytest.raises(InputError, match="at least 1"):
        D.ViewCounts((1, 3), 0)
    with pytest.raises(InputError, match="multiple of 14"):
        D.TrainDataset(D.find_objects([gobj]), 50, occupancy=False)
