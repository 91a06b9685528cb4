"""Benchmark of a ``gen`` batch on a local Ray cluster on CPU with the tests' tiny models.

Builds the tiny Zero123++ (tests/tiny_multiview.py) and uses the tiny GeoLRM weights of
tests/fixtures, makes ``--photos`` photos from the two fixture photos (mirrored, scaled), and
runs them with :func:`pipelines.batch.run_batch` here (one process) and on Ray with 1 and 2
CPU workers (1 core each, ``ray.init(num_cpus=2)``). Inputs per second are wall-clock, from the
call to the last result, so they include each worker's start (importing torch, loading the
models); ``steady`` counts only the inputs after each worker's first. Scaling efficiency =
inputs/s with 2 workers / (2 x inputs/s with 1).

It also times the dispatch alone, on a no-op input: the actor pool of ``pipelines.batch``
against Ray Data ``map_batches`` with an actor pool of the same size (batch size 1), which is
the measurement behind the choice of the actor pool (``pipelines/batch/cluster.py``).

Prints one JSON object.

    .venv/bin/python bench/batch.py                  # 8 photos
    .venv/bin/python bench/batch.py --photos 16 --no-dispatch
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import ray  # noqa: E402
import tiny_multiview as tm  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.batch import GenTask, RayConfig, gen_jobs, run_batch, run_on_ray  # noqa: E402
from pipelines.batch.ledger import Job  # noqa: E402
from pipelines.options import GenOptions  # noqa: E402

PHOTOS = ROOT / "tests" / "fixtures" / "photos"
GEOLRM = ROOT / "tests" / "fixtures" / "geolrm_tiny"


def make_photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    k = 0
    while k < n:
        for src in ("Input_2.png", "Input_8.png"):
            with Image.open(PHOTOS / src) as im:
                scale = 1.0 - 0.05 * (k // 4)
                im = im.resize((int(im.width * scale), int(im.height * scale)))
                if (k // 2) % 2:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                im.save(folder / f"p{k:03d}.png")
            k += 1
            if k == n:
                break
    return folder


def steady(records, workers: int) -> float | None:
    """Inputs per second after each worker's first input (which pays for its start)."""
    done = [r for r in records if r.status == "done"]
    per: dict[str, list[float]] = {}
    for r in done:
        per.setdefault(r.worker, []).append(r.seconds)
    rest = [s for v in per.values() for s in v[1:]]
    if not rest:
        return None
    return workers / (sum(rest) / len(rest))


@dataclass
class Noop:
    """A task that does nothing (the dispatch cost alone)."""

    command: str = "noop"

    def check(self) -> list[str]:
        return []

    def finished(self, out_dir: Path) -> bool:
        return False

    def on_device(self, device: str) -> Noop:
        return self

    def load(self) -> None:
        return None

    def run(self, state, job) -> str:
        return ""


class NoopActor:
    def __call__(self, batch):
        return batch


def dispatch(n: int, tmp: Path) -> dict:
    jobs = [(i, Job(f"j{i}", tmp / f"in{i}", tmp / f"out{i}")) for i in range(n)]
    cfg = RayConfig(workers=2)
    t0 = time.perf_counter()
    run_on_ray(Noop(), jobs, cfg, time.time(), False, lambda i: 1, lambda i, o: None, print)
    pool = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = ray.data.from_items([{"i": i} for i in range(n)])
    ds.map_batches(NoopActor, batch_size=1, concurrency=2).materialize()
    data = time.perf_counter() - t0
    return {
        "inputs": n,
        "actor_pool_s": round(pool, 2),
        "ray_data_map_batches_s": round(data, 2),
        "actor_pool_ms_per_input": round(1000 * pool / n, 1),
        "ray_data_ms_per_input": round(1000 * data / n, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--no-dispatch", action="store_true", help="skip the dispatch comparison")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="geolrm-bench-batch-"))
    photos = make_photos(tmp / "photos", args.photos)
    (tmp / "unet").mkdir()
    opts = GenOptions(
        mv_weights=tm.build_zero123pp(tmp / "z123"),
        unet=str(tm.white_unet_file(tmp / "unet" / "diffusion_pytorch_model.bin")),
        checkpoint=GEOLRM / "geolrm_tiny_weights.safetensors",
        config=ROOT / "examples" / "tiny" / "geolrm_tiny_config.json",
        size=112,
        steps=2,
        tile=tm.TILE,
        video=False,
        device="cpu",
    )
    task = GenTask(opts)
    task.check()
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env["HF_HUB_OFFLINE"] = "1"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": env},
    )
    out: dict = {"photos": args.photos, "load_avg_start": os.getloadavg()[0]}
    base = tmp / "local"
    t0 = time.perf_counter()
    result = run_batch(task, gen_jobs(photos, base), base)
    wall = time.perf_counter() - t0
    assert result.ok, result.counts
    out["local"] = {"seconds": round(wall, 2), "inputs_per_s": round(args.photos / wall, 3)}
    runs = {}
    for workers in (1, 2):
        base = tmp / f"ray{workers}"
        t0 = time.perf_counter()
        result = run_batch(task, gen_jobs(photos, base), base, ray=RayConfig(workers=workers))
        wall = time.perf_counter() - t0
        assert result.ok and result.workers == workers, result.counts
        runs[workers] = {
            "seconds": round(wall, 2),
            "inputs_per_s": round(args.photos / wall, 3),
            "steady_inputs_per_s": round(steady(result.records, workers) or 0.0, 3),
            "per_worker": result.per_worker(),
        }
    out["ray_1_worker"], out["ray_2_workers"] = runs[1], runs[2]
    out["scaling_efficiency"] = round(runs[2]["inputs_per_s"] / (2 * runs[1]["inputs_per_s"]), 3)
    s1, s2 = runs[1]["steady_inputs_per_s"], runs[2]["steady_inputs_per_s"]
    out["steady_scaling_efficiency"] = round(s2 / (2 * s1), 3) if s1 else None
    if not args.no_dispatch:
        out["dispatch_noop"] = dispatch(200, tmp / "noop")
    out["load_avg_end"] = os.getloadavg()[0]
    ray.shutdown()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
