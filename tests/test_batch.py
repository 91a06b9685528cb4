"""Folders of inputs (``pipelines.batch``): ``gen photos/`` and ``recon scenes/``, here and on a
local two-worker Ray cluster on the CPU, with the tests' tiny models.

Proof of the batch rules: a corrupt photo is one recorded failure among five results; workers
killed mid-run (before and after their commit) leave every input produced exactly once (the
production log) and no partial output; a rerun recomputes nothing; Ray's outputs are the
local run's bytes for the same seed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import tiny_multiview as tm
import torch
from batch_support import Logged
from conftest import assert_one_line_error
from PIL import Image

from pipelines.batch import (
    GenTask,
    Job,
    RayConfig,
    ReconTask,
    gen_jobs,
    list_scenes,
    produced,
    recon_jobs,
    run_batch,
    worker_count,
)
from pipelines.cameras import Cameras
from pipelines.cameras.dataparsers import load_transforms
from pipelines.errors import InputError
from pipelines.options import GenOptions, ReconOptions
from pipelines.outputs import STAGING_PREFIX
from pipelines.threads import torch_threads

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
SPOT = ROOT / "examples" / "spot"
WEIGHTS = ROOT / "tests" / "fixtures" / "geolrm_tiny" / "geolrm_tiny_weights.safetensors"
CONFIG = ROOT / "examples" / "tiny" / "geolrm_tiny_config.json"
GEOLRM = ["--checkpoint", str(WEIGHTS), "--config", str(CONFIG), "--size", "112"]
FAST = ["--steps", "2", "--tile", str(tm.TILE), "--no-video"]
OPTIMIZE = ["--method", "optimize", "--iterations", "3", "--resolution", "32", "--no-video"]
GOOD = ("bird.png", "bird_flip.png", "lamp.png", "lamp_flip.png", "lamp_small.png")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


def _cli(*args) -> tuple[int, str]:
    """The real ``geolrm`` entry point in-process (module fixtures cannot use capsys)."""
    from geolrm_cli.app import app
    from geolrm_cli.console import run_cli

    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["geolrm", *map(str, args)])
    err = io.StringIO()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stderr(err):
            code = run_cli(app)
    finally:
        mp.undo()
    return code, err.getvalue()


def _records(base: Path) -> dict[str, dict]:
    data = json.loads((base / "batch.json").read_text())
    return {Path(r["input"]).name: r for r in data["inputs"]}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "batch.json"
    }


def _staging_left(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(STAGING_PREFIX)]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs whose workers import this checkout and the tests' helpers."""
    ray = pytest.importorskip("ray")
    import logging

    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env = {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": env},
    )
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------ gen: a folder of photos


@pytest.fixture(scope="module")
def tiny_gen(tmp_path_factory) -> list[str]:
    """``gen`` options pointing every stage at the tiny models."""
    z123 = tm.build_zero123pp(tmp_path_factory.mktemp("z123"))
    unet = tm.white_unet_file(tmp_path_factory.mktemp("unet") / "diffusion_pytorch_model.bin")
    return ["--mv-weights", str(z123), "--unet", str(unet), *GEOLRM, *FAST]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six photos: five objects (the two fixtures, mirrored, one smaller) and a corrupt file."""
    folder = tmp_path_factory.mktemp("photos")
    for name, src in (("lamp", "Input_2.png"), ("bird", "Input_8.png")):
        with Image.open(PHOTOS / src) as im:
            im.save(folder / f"{name}.png")
            im.transpose(Image.FLIP_LEFT_RIGHT).save(folder / f"{name}_flip.png")
            if name == "lamp":
                im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(folder / "lamp_small.png")
    (folder / "bad.png").write_bytes(b"\x89PNG not really")
    return folder


def _gen_options(tiny: list[str]) -> GenOptions:
    """The GenOptions ``geolrm gen`` builds from ``tiny`` (as the command line parses them)."""
    args = dict(zip(tiny[0:4:2], tiny[1:4:2], strict=True))  # --mv-weights, --unet
    return GenOptions(
        mv_weights=Path(args["--mv-weights"]),
        unet=args["--unet"],
        checkpoint=WEIGHTS,
        config=CONFIG,
        size=112,
        steps=2,
        tile=tm.TILE,
        video=False,
        device="cpu",
    )


@pytest.fixture(scope="module")
def gen_runs(tmp_path_factory, photos, tiny_gen, ray_cluster) -> dict:
    """The same folder here (``geolrm gen``) and on Ray (two workers, one killed before its
    commit on lamp.png and one right after committing bird.png), then rerun with ``--ray``."""
    tmp = tmp_path_factory.mktemp("gen_runs")
    local = tmp / "local"
    code_local, err_local = _cli("gen", photos, "-o", local, *tiny_gen)
    on_ray = tmp / "ray"
    log = tmp / "produced.log"
    task = Logged(
        GenTask(_gen_options(tiny_gen)),
        log,
        tmp / "markers",
        die_before=("lamp.png",),
        die_after=("bird.png",),
    )
    task.check()
    t0 = time.perf_counter()
    result = run_batch(task, gen_jobs(photos, on_ray), on_ray, ray=RayConfig(workers=2))
    seconds = time.perf_counter() - t0
    records = _records(on_ray)  # before the rerun rewrites batch.json
    stamps = {p: p.stat().st_mtime_ns for p in on_ray.rglob("model.ply")}
    code_again, err_again = _cli("gen", photos, "-o", on_ray, *tiny_gen, "--ray")
    return dict(
        local=local,
        code_local=code_local,
        err_local=err_local,
        ray=on_ray,
        result=result,
        records=records,
        seconds=seconds,
        log=log,
        stamps=stamps,
        code_again=code_again,
        err_again=err_again,
    )


@pytest.mark.slow  # ~75 s on 2 busy cores: 18 tiny gen runs, 5 Ray workers
def test_corrupt_photo_is_one_recorded_failure(gen_runs) -> None:
    local = gen_runs["local"]
    assert gen_runs["code_local"] == 1, gen_runs["err_local"]  # an input failed
    assert sorted(p.name for p in local.iterdir()) == [
        "batch.json",
        *sorted(Path(n).stem for n in GOOD),
    ]
    recs = _records(local)
    assert {n: r["status"] for n, r in recs.items()} == {
        **dict.fromkeys(GOOD, "done"),
        "bad.png": "failed",
    }
    bad = recs["bad.png"]
    assert "bad.png" in bad["error"] and "cannot read image" in bad["error"]
    assert "\n" not in bad["error"] and bad["attempts"] == 1
    for name in GOOD:
        assert (local / Path(name).stem / "model.ply").is_file()
    assert "error: bad.png:" in gen_runs["err_local"]
    data = json.loads((local / "batch.json").read_text())
    assert data["counts"]["done"] == 5 and data["counts"]["failed"] == 1


@pytest.mark.slow  # ~75 s on 2 busy cores: 18 tiny gen runs, 5 Ray workers
def test_killed_workers_every_input_once(gen_runs) -> None:
    """lamp.png's worker died before its commit (a half-written staging folder left), bird.png's
    right after: both were started twice, each input was produced exactly once, the corrupt
    photo still fails, and no staging folder remains."""
    result, on_ray = gen_runs["result"], gen_runs["ray"]
    produced_names = [ln.split()[0] for ln in gen_runs["log"].read_text().splitlines()]
    assert sorted(produced_names) == sorted(GOOD)  # once each
    recs = gen_runs["records"]
    assert {n: r["status"] for n, r in recs.items()} == {
        **dict.fromkeys(GOOD, "done"),
        "bad.png": "failed",
    }
    assert recs["lamp.png"]["attempts"] == 2 and recs["bird.png"]["attempts"] == 2
    assert "died" in recs["lamp.png"]["error"] and "died" in recs["bird.png"]["error"]
    assert "earlier attempt" in recs["bird.png"]["detail"]  # kept, not produced again
    for name in ("bird_flip.png", "lamp_flip.png", "lamp_small.png", "bad.png"):
        assert recs[name]["attempts"] == 1
    assert not result.ok and result.workers == 2
    assert _staging_left(on_ray) == []
    workers = {r.worker for r in result.records if r.status == "done"}
    assert len(workers) >= 2  # the work was spread (and dead workers replaced)


@pytest.mark.slow  # ~75 s on 2 busy cores: 18 tiny gen runs, 5 Ray workers
def test_ray_outputs_are_the_local_bytes(gen_runs) -> None:
    """Same seed, same thread count (one): every file of every photo is bit-identical."""
    a, b = _files(gen_runs["local"]), _files(gen_runs["ray"])
    assert sorted(a) == sorted(b) and len(a) >= 5 * 7
    for name in a:
        assert a[name] == b[name], name


@pytest.mark.slow  # ~75 s on 2 busy cores: 18 tiny gen runs, 5 Ray workers
def test_rerun_recomputes_nothing(gen_runs) -> None:
    on_ray = gen_runs["ray"]
    err = gen_runs["err_again"]
    assert gen_runs["code_again"] == 1, err  # the corrupt photo fails again
    assert err.count("skipped: ") == 5 and "1 of 6 inputs to run" in err, err
    assert {p: p.stat().st_mtime_ns for p in on_ray.rglob("model.ply")} == gen_runs["stamps"]
    recs = _records(on_ray)
    assert [n for n, r in recs.items() if r["status"] == "skipped"] == sorted(GOOD)
    assert recs["bad.png"]["status"] == "failed"


# ------------------------------------------------------------------ recon: a folder of scenes


def _scene(folder: Path, indices: list[int], size: int = 32) -> None:
    cams = load_transforms(SPOT / "transforms_train.json").subset(indices)
    names = []
    (folder / "images").mkdir(parents=True)
    for k, p in enumerate(cams.image_paths):
        names.append(f"images/{k:02d}.png")
        with Image.open(p) as im:
            im.convert("RGBA").resize((size, size), Image.LANCZOS).save(folder / names[-1])
    small = Cameras(cams.c2w, cams.K, cams.width, cams.height, cams.image_paths).resized(size, size)
    data = small.to_transforms_json(file_paths=names)
    (folder / "transforms.json").write_text(json.dumps(data, indent=1) + "\n")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Three scenes of Spot (six 32 px views each) and one whose transforms.json is broken."""
    folder = tmp_path_factory.mktemp("scenes")
    for k, name in enumerate(("front", "middle", "back")):
        _scene(folder / name, list(range(6 * k, 6 * k + 6)))
    (folder / "broken").mkdir()
    (folder / "broken" / "transforms.json").write_text("{not json")
    (folder / "notes").mkdir()  # no transforms.json: not a scene
    return folder


def test_recon_scenes_local_and_ray(scenes, tmp_path, ray_cluster) -> None:
    """The folder of scenes here (``geolrm recon``), on Ray with a worker killed before its
    commit and one right after (each scene produced once, the local bytes), then rerun with
    ``--ray`` (nothing recomputed; the broken scene fails again)."""
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    code, err = _cli("recon", scenes, "-o", local, *OPTIMIZE)
    assert code == 1, err
    recs = _records(local)
    want = {"back": "done", "broken": "failed", "front": "done", "middle": "done"}
    assert {n: r["status"] for n, r in recs.items()} == want
    assert "transforms.json" in recs["broken"]["error"] and recs["broken"]["attempts"] == 1
    assert sorted(p.name for p in local.iterdir()) == ["back", "batch.json", "front", "middle"]

    opts = ReconOptions(method="optimize", iterations=3, resolution=32, video=False)
    log = tmp_path / "produced.log"
    task = Logged(ReconTask(opts), log, tmp_path / "markers", ("front",), ("middle",))
    result = run_batch(task, recon_jobs(scenes, on_ray), on_ray, ray=RayConfig(workers=2))
    assert sorted(ln.split()[0] for ln in log.read_text().splitlines()) == [
        "back",
        "front",
        "middle",
    ]  # once each
    recs = _records(on_ray)
    assert {n: r["status"] for n, r in recs.items()} == want
    assert {n: r["attempts"] for n, r in recs.items()} == {
        "back": 1,
        "broken": 1,
        "front": 2,
        "middle": 2,
    }
    assert "earlier attempt" in recs["middle"]["detail"]
    assert result.workers == 2 and _staging_left(on_ray) == []
    a, b = _files(local), _files(on_ray)
    assert sorted(a) == [
        f"{s}/{f}"
        for s in ("back", "front", "middle")
        for f in ("cameras.json", "model.ply", "model_frame.json")
    ]
    for name in a:
        assert a[name] == b[name], name

    stamps = {p: p.stat().st_mtime_ns for p in on_ray.rglob("model.ply")}
    code, err = _cli("recon", scenes, "-o", on_ray, *OPTIMIZE, "--ray", "--workers", "2")
    assert code == 1, err
    assert err.count("skipped: ") == 3 and "1 of 4 inputs to run (1 Ray worker)" in err, err
    assert {p: p.stat().st_mtime_ns for p in on_ray.rglob("model.ply")} == stamps


def test_recon_scenes_geolrm_loads_once_and_matches_one_scene(tmp_path) -> None:
    """--method geolrm over two scenes with one network: each equals its own `geolrm recon`."""
    views = ROOT / "tests" / "fixtures" / "geolrm_tiny" / "tiny_views"
    scenes = tmp_path / "scenes"
    for name in ("a", "b"):
        shutil.copytree(views, scenes / name)
    code, err = _cli("recon", scenes, "-o", tmp_path / "batch", *GEOLRM, "--no-video")
    assert code == 0, err
    code, err = _cli("recon", views, "-o", tmp_path / "one", *GEOLRM, "--no-video")
    assert code == 0, err
    one = (tmp_path / "one" / "model.ply").read_bytes()
    for name in ("a", "b"):
        assert (tmp_path / "batch" / name / "model.ply").read_bytes() == one


# ------------------------------------------------------------------ the rules


def test_without_ray_one_line(tmp_path, photos, monkeypatch, capsys) -> None:
    from geolrm_cli.app import app
    from geolrm_cli.console import run_cli

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["geolrm", "gen", str(photos), "-o", str(out), "--ray"])
    capsys.readouterr()
    assert run_cli(app) == 2
    assert_one_line_error(capsys.readouterr().err, "pip install 'geolrm[ray]'")
    assert not out.exists()


def test_option_errors(tmp_path, photos, scenes, capsys, monkeypatch) -> None:
    from geolrm_cli.app import app
    from geolrm_cli.console import run_cli

    def run(*args) -> str:
        monkeypatch.setattr(sys, "argv", ["geolrm", *map(str, args)])
        capsys.readouterr()
        assert run_cli(app) == 2
        return capsys.readouterr().err

    err = run("gen", photos, "-o", tmp_path / "o", "--workers", "2")
    assert_one_line_error(err, "--workers only apply with --ray")
    err = run("gen", PHOTOS / "Input_2.png", "-o", tmp_path / "o", "--ray")
    assert_one_line_error(err, "--ray runs a folder of photos")
    err = run("recon", scenes, "-o", tmp_path / "o", *OPTIMIZE, "--cameras", "cams.json")
    assert_one_line_error(err, "a folder of scenes reads each scene's own transforms.json")
    assert not (tmp_path / "o").exists()


def test_scene_listing(scenes) -> None:
    assert [p.name for p in list_scenes(scenes)] == ["back", "broken", "front", "middle"]
    assert list_scenes(scenes / "front") == []  # one scene, not a folder of scenes
    jobs = recon_jobs(scenes, Path("out"))
    assert jobs[0] == Job("back", scenes / "back", Path("out/back"))
    with pytest.raises(InputError, match="holds no scenes"):
        recon_jobs(scenes / "notes", Path("out"))


def test_worker_count() -> None:
    assert worker_count({"CPU": 16, "GPU": 4}, None, None) == (4, {"num_gpus": 1, "num_cpus": 1})
    assert worker_count({"CPU": 16, "GPU": 4}, None, 4) == (4, {"num_cpus": 4})
    assert worker_count({"CPU": 2}, None, None) == (2, {"num_cpus": 1})
    assert worker_count({"CPU": 2}, 1, None) == (1, {"num_cpus": 1})


def test_produced_since(tmp_path) -> None:
    """The skip rule of a retry under --overwrite: only an output written by this batch."""
    out = tmp_path / "scene"
    task = ReconTask(ReconOptions(method="optimize", video=False))
    assert not produced(task, out)
    out.mkdir()
    for name in ("model.ply", "cameras.json", "model_frame.json"):
        (out / name).write_text("x")
    assert produced(task, out) and produced(task, out, since=0.0)
    assert not produced(task, out, since=time.time() + 60)
