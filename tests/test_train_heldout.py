"""Validation on held-out views: a validation sample's inputs are training views and its targets
the object's ``transforms_test.json`` views (cameras in the inputs' model frame, images and depth
loaded as training targets are), drawn deterministically; objects without a held-out split fall
back to training-split targets; ``train()`` validates that way and logs ``val/psnr``.

On copies of the repository's ``examples/spot`` (21 training views, 12 test views, 512 px RGBA)
with the training depth of ``tests/fixtures/spot_depth``, at 56 px and a 32³ grid.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from train_support import small_config

from pipelines.cameras.dataparsers import parse_transforms
from pipelines.cameras.images import WHITE, load_views, load_views_and_masks
from pipelines.cameras.similarity import (
    apply_similarity,
    decompose_similarity,
    invert_similarity,
)
from pipelines.errors import Note
from pipelines.scene import is_identity, to_model_frame
from pipelines.train.data import TrainDataset, ViewCounts, find_objects
from pipelines.train.engine import VAL_SAMPLE_BASE, train

ROOT = Path(__file__).resolve().parents[1]
SPOT = ROOT / "examples" / "spot"
DEPTH = ROOT / "tests" / "fixtures" / "spot_depth"  # Spot's 21 training depth PNGs
GOBJ = ROOT / "tests" / "fixtures" / "gobjaverse_spot"
TINY = json.loads((ROOT / "examples" / "tiny" / "geolrm_tiny_config.json").read_text())
S = 56
G = 32


def _copy_spot(dst: Path, test_split: bool = True) -> Path:
    """Spot at ``dst``: cameras, views, the training depth PNGs, ``points.npy``; with
    ``test_split`` its ``transforms_test.json`` and ``test/`` views too."""
    dst.mkdir(parents=True)
    shutil.copy(SPOT / "transforms_train.json", dst)
    shutil.copytree(SPOT / "train", dst / "train")
    for p in DEPTH.glob("*_depth.png"):
        shutil.copy(p, dst / "train")
    shutil.copy(SPOT / "points.npy", dst)
    if test_split:
        shutil.copy(SPOT / "transforms_test.json", dst)
        shutil.copytree(SPOT / "test", dst / "test")
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _edit(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def spot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_spot(tmp_path_factory.mktemp("objects") / "spot")


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spot in another world frame (both splits: scaled 1.7, turned 40° about z, moved), so
    that the model frame is not the files' (``M`` is no identity)."""
    dst = _copy_spot(tmp_path_factory.mktemp("objects") / "moved")
    a, s = math.radians(40.0), 1.7
    T = np.eye(4)
    T[:3, :3] = s * np.array(
        [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    )
    T[:3, 3] = [0.3, -0.2, 0.5]

    def move(meta: dict) -> None:
        for f in meta["frames"]:
            f["transform_matrix"] = (T @ np.asarray(f["transform_matrix"])).tolist()
        meta["depth_unit_scale_factor"] = meta.get("depth_unit_scale_factor", 1e-3) * s

    for split in ("train", "test"):
        _edit(dst / f"transforms_{split}.json", move)
    return dst


@pytest.fixture(scope="module")
def no_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spot without a held-out split (no ``transforms_test.json``)."""
    return _copy_spot(tmp_path_factory.mktemp("objects") / "spot", test_split=False)


def _find(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Note)  # the moved copy's scaled rotations
        return find_objects([path])


def _dataset(objects, targets: str, seed: int = 0, counts=ViewCounts((1, 4), 4)) -> TrainDataset:
    return TrainDataset(objects, S, counts, seed=seed, grid_size=G, targets=targets)


KEYS = [(0, 1, 0), (0, 3, 7), (0, 4, VAL_SAMPLE_BASE)]


# -- find_objects -----------------------------------------------------------------------------


def test_find_objects_reads_the_held_out_split(spot: Path, no_test: Path) -> None:
    obj = _find(spot)[0]
    test = parse_transforms(spot / "transforms_test.json").cameras
    assert len(obj.cameras) == 21 and obj.depth_paths is not None
    assert obj.held_out is not None and len(obj.held_out.cameras) == 12
    assert torch.equal(obj.held_out.cameras.c2w, test.c2w)
    assert torch.equal(obj.held_out.cameras.K, test.K)
    assert obj.held_out.cameras.image_paths == test.image_paths
    assert obj.held_out.cameras.image_paths[0] == spot / "test" / "000.png"
    assert obj.held_out.depth_paths is None and obj.held_out.depth_scale is None
    assert obj.split("held_out") is obj.held_out
    assert torch.equal(obj.split("train").cameras.c2w, obj.cameras.c2w)
    # read as its test split, an object has nothing more held out; without the file: none
    assert find_objects([spot], split="test")[0].held_out is None
    assert _find(no_test)[0].held_out is None
    with pytest.raises(ValueError, match="held_out"):
        _find(no_test)[0].split("held_out")
    # G-Objaverse: no held-out views within an object (hold out whole objects)
    assert find_objects([GOBJ])[0].held_out is None


def test_unusable_held_out_split_or_depth_is_reported_and_dropped(tmp_path: Path) -> None:
    """A test split naming a missing image is dropped (the object still trains); one naming
    missing depth files keeps its views, without depth."""
    bad = _copy_spot(tmp_path / "bad")
    (bad / "test" / "003.png").unlink()
    nodepth = _copy_spot(tmp_path / "nodepth")

    def name_depth(meta: dict) -> None:
        for i, f in enumerate(meta["frames"]):
            f["depth_file_path"] = f"test/{i:03d}_depth.png"  # not shipped

    _edit(nodepth / "transforms_test.json", name_depth)
    skipped: list[tuple[Path, str]] = []
    objs = find_objects([bad, nodepth], on_skip=lambda p, r: skipped.append((p, r)))
    assert [o.name for o in objs] == ["bad", "nodepth"]
    assert objs[0].held_out is None and len(objs[0].cameras) == 21
    assert objs[1].held_out is not None and len(objs[1].held_out.cameras) == 12
    assert objs[1].held_out.depth_paths is None
    (p0, r0), (p1, r1) = skipped
    assert p0 == bad / "transforms_test.json" and "held-out views unused" in r0 and "003" in r0
    assert p1 == nodepth / "transforms_test.json" and "held-out depth unused" in r1
    sample = _dataset(objs[1:], "held_out")[(0, 2, 5)]
    assert not sample["has_depth"] and not sample["target_depth"].any()


# -- samples ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["spot", "moved"])
def test_validation_targets_are_the_test_views(where: str, request) -> None:
    """Inputs: distinct training views, in the model frame recon gives them; targets: distinct
    test views, their cameras the test split's in that frame, their images the test images."""
    root = request.getfixturevalue(where)
    objs = _find(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Note)
        train_cams = parse_transforms(root / "transforms_train.json").cameras
        test_cams = parse_transforms(root / "transforms_test.json").cameras
    data = _dataset(objs, "held_out")
    assert data.target_split(0) == "held_out"
    for key in KEYS:
        s = data[key]
        inputs, targets = s["input_views"].tolist(), s["target_views"].tolist()
        assert torch.equal(data.views(key)[0], s["input_views"])
        assert torch.equal(data.views(key)[1], s["target_views"])
        assert len(inputs) == key[1] == len(set(inputs)) and all(0 <= v < 21 for v in inputs)
        assert len(targets) == 4 == len(set(targets)) and all(0 <= v < 12 for v in targets)
        # the inputs: recon's images and model frame of these training views
        images, used = load_views(train_cams.subset(inputs), S)
        model_in, m = to_model_frame(used)
        assert where == "spot" or not is_identity(m)
        assert torch.equal(s["input_images"], images)
        assert torch.allclose(s["input_c2ws"], model_in.c2w, atol=1e-6)
        assert torch.allclose(s["input_Ks"], model_in.normalized_K())
        # the targets: the test split's cameras, mapped by the inputs' M
        _, held = load_views(test_cams.subset(targets), S)
        want = held if is_identity(m) else held.transformed(m)
        assert torch.allclose(s["target_c2ws"], want.c2w, atol=1e-5)
        assert torch.allclose(s["target_Ks"], want.normalized_K())
        # mapped back to the files' world: the test cameras' centres, none a training one's
        centres = apply_similarity(invert_similarity(m), s["target_c2ws"][:, :3, 3])
        assert torch.allclose(centres, test_cams.c2w[targets, :3, 3], atol=1e-4)
        gap = torch.cdist(centres.double(), train_cams.c2w[:, :3, 3].double()).min()
        assert gap > 0.05 * float(train_cams.c2w[:, :3, 3].norm(dim=-1).mean()), "no train view"
        # the target images: the test images, straight colour and alpha of the same read
        white, alpha, _ = load_views_and_masks(test_cams.subset(targets), S, WHITE)
        a = s["target_alpha"]
        assert torch.equal(a, alpha[:, None])
        assert ((a > 0) & (a < 1)).any() and (a == 1).any()
        inside = (a == 1).expand_as(white)
        assert torch.equal(s["target_rgb"][inside], white[inside])
        composite = s["target_rgb"] * a + (1 - a)
        err = (composite - white).abs()
        unclamped = (s["target_rgb"] > 0) & (s["target_rgb"] < 1)  # no clamp of bicubic ringing
        assert float(err[unclamped].max()) < 1e-5 and float(err.mean()) < 1e-3
        # the test split names no depth: the depth term is off, even though train has depth
        assert not s["has_depth"] and not s["target_depth"].any()


def test_training_samples_keep_training_targets(spot: Path) -> None:
    """The training dataset (``targets="train"``) still draws its targets from the training
    split, with its depth; a validation sample's inputs are the training sample's of its key."""
    objs = _find(spot)
    train_set = _dataset(objs, "train")
    val_set = train_set.with_targets("held_out")
    assert train_set.target_split(0) == "train" and val_set.target_split(0) == "held_out"
    for key in KEYS:
        t, v = train_set[key], val_set[key]
        assert t["has_depth"] and t["target_depth"].any()
        inputs, targets = t["input_views"].tolist(), t["target_views"].tolist()
        assert all(0 <= x < 21 for x in targets) and not set(inputs) & set(targets)
        assert torch.equal(t["input_views"], v["input_views"])
        assert torch.equal(t["input_images"], v["input_images"])
        assert torch.equal(t["occupancy"], v["occupancy"])


def test_held_out_depth_is_used_when_present(tmp_path: Path) -> None:
    """A test split whose frames name existing depth PNGs: its targets carry that depth (the
    PNG in world units, nearest at the pixel centres, times the model frame's scale)."""
    root = _copy_spot(tmp_path / "spot")
    train_meta = json.loads((root / "transforms_train.json").read_text())
    frames = train_meta["frames"][18:21]  # three training frames with depth, as a test split
    (root / "transforms_test.json").write_text(json.dumps(train_meta | {"frames": frames}))
    obj = _find(root)[0]
    assert obj.held_out is not None and obj.held_out.depth_scale == 1e-4
    assert [p.name for p in obj.held_out.depth_paths] == [f"0{i}_depth.png" for i in (18, 19, 20)]
    data = _dataset([obj], "held_out", counts=ViewCounts((3, 3), 3))
    s = data[(0, 3, 4)]
    assert s["has_depth"]
    _, used = load_views(obj.cameras.subset(s["input_views"].tolist()), S)
    m = to_model_frame(used)[1]
    scale = 1.0 if is_identity(m) else decompose_similarity(m)[0]
    assert sorted(s["target_views"].tolist()) == [0, 1, 2]
    for j, v in enumerate(s["target_views"].tolist()):
        raw = np.asarray(Image.open(root / "train" / f"0{18 + v}_depth.png")).astype(np.float64)
        want = torch.from_numpy((raw * 1e-4).astype(np.float32))[None, None]
        want = torch.nn.functional.interpolate(want, size=(S, S), mode="nearest-exact")[0]
        want = want if scale == 1.0 else want * scale
        assert torch.equal(s["target_depth"][j], want)
        assert want.any()


def test_validation_samples_are_deterministic(spot: Path) -> None:
    """A sample is a pure function of (seed, key) and the object: two datasets built apart
    agree, another seed draws other views; the shared view cache keeps the splits apart."""
    a = _dataset(_find(spot), "held_out")
    b = _dataset(_find(spot), "train").with_targets("held_out")
    for key in KEYS:
        x, y = a[key], b[key]
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), key
    other = _dataset(_find(spot), "held_out", seed=1)
    assert any(not torch.equal(torch.cat(a.views(k)), torch.cat(other.views(k))) for k in KEYS)
    # after held-out targets were cached, a training sample whose targets have the same view
    # numbers reads the training views (the cache key names the split)
    fresh = _dataset(_find(spot), "train")
    held = set(a[KEYS[1]]["target_views"].tolist())
    key = next((0, 3, i) for i in range(100) if held & set(fresh.views((0, 3, i))[1].tolist()))
    shared = a.with_targets("train")
    x, y = shared[key], fresh[key]
    assert all(torch.equal(x[k], y[k]) for k in x)
    same = sorted(held & set(x["target_views"].tolist()))
    v = same[0]
    j, i = x["target_views"].tolist().index(v), a[KEYS[1]]["target_views"].tolist().index(v)
    assert not torch.equal(x["target_rgb"][j], a[KEYS[1]]["target_rgb"][i])


def test_without_a_held_out_split_validation_falls_back(no_test: Path) -> None:
    """No transforms_test.json: the validation sample is the training sample of its key."""
    objs = _find(no_test)
    val_set, train_set = _dataset(objs, "held_out"), _dataset(objs, "train")
    assert val_set.target_split(0) == "train"
    for key in KEYS:
        x, y = val_set[key], train_set[key]
        assert all(torch.equal(x[k], y[k]) for k in x), key
        assert x["has_depth"]
    with pytest.raises(ValueError, match="targets"):
        _dataset(objs, "test")


# -- train() ----------------------------------------------------------------------------------


class _RecordValidation(Callback):
    """Keeps each validation batch's target cameras and sample ids."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches.append({k: batch[k].clone() for k in ("target_c2ws", "sample_id")})


def _val_psnr(run: Path) -> list[float]:
    with open(run / "logs" / "reconstruction" / "metrics.csv", newline="") as f:
        return [float(r["val/psnr"]) for r in csv.DictReader(f) if r.get("val/psnr")]


def test_train_validates_on_held_out_views(spot: Path, no_test: Path, tmp_path: Path) -> None:
    """Two real steps, validated after each: the validation batch is the held-out sample of
    the validation key (test cameras), `val/psnr` is logged; with --val on an object without
    a held-out split, a note says its targets are training views."""
    rec = _RecordValidation()
    cfg = small_config(max_steps=2, val_every=1)
    result = train(
        [spot], tmp_path / "run", cfg, model_config=TINY, progress=False, callbacks=[rec]
    )
    assert result.steps == {"reconstruction": 2}
    assert math.isfinite(result.metrics["val/psnr"]) and result.metrics["val/psnr"] > 0
    psnr = _val_psnr(tmp_path / "run")
    assert len(psnr) == 2 and all(math.isfinite(p) for p in psnr)
    assert len(rec.batches) == 2
    want = _dataset(_find(spot), "held_out", counts=ViewCounts((1, 3), 2))[(0, 3, VAL_SAMPLE_BASE)]
    for b in rec.batches:
        assert int(b["sample_id"][0]) == VAL_SAMPLE_BASE
        assert torch.equal(b["target_c2ws"][0], want["target_c2ws"])
    assert not any("validation" in n for n in result.notes), result.notes

    notes: list[str] = []
    rec = _RecordValidation()
    result = train(
        [spot],
        tmp_path / "run2",
        small_config(max_steps=1, val_every=1),
        model_config=TINY,
        val=[no_test],
        progress=False,
        callbacks=[rec],
        on_note=notes.append,
    )
    assert math.isfinite(result.metrics["val/psnr"])
    assert any(
        n.startswith("validation: spot has no held-out views") and "trains on" not in n
        for n in notes
    ), notes
    want = _dataset(_find(no_test), "train", counts=ViewCounts((1, 3), 2))[(0, 3, VAL_SAMPLE_BASE)]
    assert all(torch.equal(b["target_c2ws"][0], want["target_c2ws"]) for b in rec.batches)
