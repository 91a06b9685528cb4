"""`geolrm train`: the stages' steps learn, the run folder's weights reload strictly in recon,
Ctrl-C and --resume are exact, DDP over two CPU processes equals one process with twice the
batch, and bad input is one line with exit code 2 (tiny config, the example Spot)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from torch.utils.data import default_collate
from train_support import small_config

from pipelines.geolrm import GeoLRM
from pipelines.reconstruct import load_model
from pipelines.train.config import TrainConfig
from pipelines.train.data import StepSampler, TrainDataset, ViewCounts, find_objects
from pipelines.train.engine import export_weights, train
from pipelines.train.module import GeoLRMTraining, cosine_schedule

ROOT = Path(__file__).resolve().parents[1]
#: the repository's own copy of Spot (21 RGBA training views, points.npy; no depth maps, so the
#: depth term is off): the tests stand alone, without ../shared
SPOT = ROOT / "examples" / "spot"
TINY = json.loads((ROOT / "examples" / "tiny" / "geolrm_tiny_config.json").read_text())
SIZE = 56


@pytest.fixture(scope="module")
def spot(tmp_path_factory) -> Path:
    """A copy of the example Spot (the occupancy cache is written beside the object)."""
    dst = tmp_path_factory.mktemp("objects") / "spot"
    shutil.copytree(SPOT, dst, ignore=shutil.ignore_patterns("*.ply", "*.py"))
    # the example ships without its depth PNGs: an object without depth maps
    for split in ("train", "test"):
        path = dst / f"transforms_{split}.json"
        meta = json.loads(path.read_text())
        for frame in meta["frames"]:
            frame.pop("depth_file_path", None)
        path.write_text(json.dumps(meta))
    return dst


def _batch(spot: Path, stage_cfg: TrainConfig, i: int = 0) -> dict:
    objects = find_objects([spot])
    counts = ViewCounts(tuple(stage_cfg.views_in), stage_cfg.views_out)
    data = TrainDataset(objects, stage_cfg.size, counts, seed=0, grid_size=32)
    keys = StepSampler(len(objects), 1, counts, seed=0).batch(i)
    return default_collate([data[k] for k in keys])


def test_cosine_schedule_matches_the_official_formula() -> None:
    """Warm-up from the floor to 1, then cosine down to the floor (official LambdaLR)."""
    assert cosine_schedule(0, 10, 100, 0.001) == pytest.approx(0.001)
    assert cosine_schedule(5, 10, 100, 0.001) == pytest.approx(0.001 + 0.5 * 0.999)
    assert cosine_schedule(10, 10, 100, 0.001) == pytest.approx(1.0)
    assert cosine_schedule(55, 10, 100, 0.001) == pytest.approx(0.001 + 0.5 * 0.999)
    assert cosine_schedule(100, 10, 100, 0.001) == pytest.approx(0.001)


@pytest.mark.parametrize("stage", ["proposal", "reconstruction"])
def test_a_few_steps_lower_the_loss(spot: Path, stage: str) -> None:
    """Adam on one fixed batch of Spot: the stage's loss falls (both stages, real renders)."""
    cfg = small_config(stage=stage)
    batch = _batch(spot, cfg)
    torch.manual_seed(0)
    model = GeoLRM.from_config(TINY).train()
    module = GeoLRMTraining(model, cfg, stage, anchors="occupancy")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-3)
    losses = []
    for _ in range(8):
        if stage == "proposal":
            loss, _ = module.proposal_step(batch)
        else:
            loss, _, _ = module.reconstruction_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(p.grad is not None for p in params), "every trained parameter gets a gradient"
    assert min(losses[-2:]) < 0.8 * losses[0], losses


def test_export_reloads_strictly_and_reproduces_the_trained_model(spot: Path, tmp_path) -> None:
    """A few real steps, exported: `recon`'s loader reads the run folder strictly and the
    reloaded model's Gaussians equal the trained module's."""
    result = train(
        [spot], tmp_path / "run", small_config(max_steps=2), model_config=TINY, progress=False
    )
    assert result.steps == {"reconstruction": 2}
    trained = load_file(result.weights)
    reloaded = load_model(result.weights, result.config)  # what geolrm recon --checkpoint does
    batch = _batch(spot, small_config(), i=3)
    args = (batch["input_images"], batch["input_c2ws"], batch["input_Ks"])
    ref = GeoLRM.from_config(json.loads(result.config.read_text()))
    ref.load_state_dict({k: v for k, v in trained.items()}, strict=True)
    a, b = reloaded(*args), ref(*args)
    assert torch.equal(a.gaussians, b.gaussians)
    assert a.gaussians.abs().sum() > 0
    # the step's weights differ from the seeded initialisation (it trained)
    torch.manual_seed(0)
    init = GeoLRM.from_config(TINY).state_dict()
    changed = [k for k in trained if not torch.equal(trained[k], init[k])]
    assert any(k.startswith("lrm_generator.transformer") for k in changed)
    assert not any(k.startswith("serializer.") for k in changed), "the proposal stage is frozen"


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: int(v) if k == "step" else v for k, v in r.items()} for r in csv.DictReader(f)]


class _Interrupt(Callback):
    """Sends this process a real SIGINT (Ctrl-C) after optimiser step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(spot: Path, tmp_path) -> None:
    """Ctrl-C at step 2 of 5 leaves a complete checkpoint; --resume then ends on exactly the
    parameters of a run that was never interrupted (data order, optimiser, schedule)."""
    cfg = small_config(max_steps=5, checkpoint_every=10)
    straight = train([spot], tmp_path / "a", cfg, model_config=TINY, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(
            [spot],
            tmp_path / "b",
            cfg,
            model_config=TINY,
            progress=False,
            callbacks=[_Interrupt(2)],
        )
    last = tmp_path / "b" / "checkpoints" / "reconstruction" / "last.ckpt"
    stopped = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= stopped < 5, stopped  # the step in flight when Ctrl-C came is finished
    assert not list((tmp_path / "b").rglob("*.part*")), "no half-written file"
    resumed = train([spot], tmp_path / "b", cfg, model_config=TINY, progress=False, resume=True)
    assert resumed.steps == {"reconstruction": 5}
    a, b = load_file(straight.weights), load_file(resumed.weights)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst == 0.0, worst
    # the resumed run continues the interrupted run's metrics.csv: every step logged once, with
    # the uninterrupted run's values
    logs = [
        _csv_rows(r.run_dir / "logs" / "reconstruction" / "metrics.csv")
        for r in (straight, resumed)
    ]
    assert [row["step"] for row in logs[1]] == [row["step"] for row in logs[0]] == list(range(5))
    assert [row["train/loss"] for row in logs[1]] == [row["train/loss"] for row in logs[0]]


def test_data_loader_workers_train_the_same_weights(spot: Path, tmp_path) -> None:
    """Two data-loading worker processes feed exactly the batches of the main process: the
    weights after 3 steps are bit-identical."""
    runs = [
        train(
            [spot], tmp_path / f"w{w}", small_config(max_steps=3, workers=w), TINY, progress=False
        )
        for w in (0, 2)
    ]
    a, b = (load_file(r.weights) for r in runs)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


def test_fine_tune_from_a_checkpoint_with_a_frozen_encoder(spot: Path, tmp_path) -> None:
    """--init starts from the checkpoint's weights, in the attention mode they were trained
    with; --freeze-encoder keeps DINOv2 exactly as loaded while the rest of the stage trains."""
    ckpt = ROOT / "tests" / "fixtures" / "geolrm_tiny" / "geolrm_tiny_weights.safetensors"
    cfg = small_config(max_steps=2, init=str(ckpt), freeze_encoder=True)
    assert cfg.attention_mode() == "official" and small_config().attention_mode() == "standard"
    result = train([spot], tmp_path / "run", cfg, model_config=TINY, progress=False)
    start, end = load_file(ckpt), load_file(result.weights)
    assert start.keys() == end.keys()
    same = {k for k in end if torch.equal(start[k], end[k])}
    dino = {k for k in end if k.startswith("lrm_generator.encoder.model.")}
    assert dino and dino <= same, "the frozen encoder moved"
    assert {k for k in end if k.startswith("serializer.")} <= same, "the other stage moved"
    trained = {k for k in end if k.startswith("lrm_generator.transformer.")} - same
    assert trained, "the reconstruction transformer did not train"
    # the largest change is that of 2 small steps from the checkpoint, not a re-initialisation
    worst = max(float((start[k] - end[k]).abs().max()) for k in trained)
    assert 0 < worst < 0.05, worst


def test_init_geolrm_without_downloaded_weights_is_one_line(spot: Path, tmp_path) -> None:
    """--init geolrm reads the released weights through the registry; offline and not
    downloaded, it names the download command (exit code 2, no traceback)."""
    empty_cache = {"HF_HUB_CACHE": str(tmp_path / "hf")}
    r = _cli(str(spot), "-o", str(tmp_path / "run"), "--init", "geolrm", env=empty_cache)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "geolrm weights download geolrm" in lines[0], r.stderr


def test_bf16_mixed_precision_trains_and_exports_fp32(spot: Path, tmp_path) -> None:
    """--precision bf16-mixed (here on CPU): both stages step with finite losses and the
    exported weights stay float32 (the master weights of mixed precision)."""
    cfg = small_config(max_steps=2, stage="both", precision="bf16-mixed")
    result = train([spot], tmp_path / "run", cfg, model_config=TINY, progress=False)
    assert result.steps == {"proposal": 2, "reconstruction": 2}
    assert all(math.isfinite(result.metrics[k]) for k in ("train/loss", "train/psnr"))
    weights = load_file(result.weights)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_run_folder_in_use_needs_resume(spot: Path, tmp_path) -> None:
    train([spot], tmp_path / "run", small_config(max_steps=1), model_config=TINY, progress=False)
    from pipelines.errors import InputError

    with pytest.raises(InputError, match="--resume"):
        train(
            [spot], tmp_path / "run", small_config(max_steps=1), model_config=TINY, progress=False
        )


def _cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "geolrm_cli.app", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=900,
    )


def test_bad_data_is_one_line_with_exit_code_2(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    r = _cli(str(empty), "-o", str(tmp_path / "run"), "--config", str(config))
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    # one line per skipped object, then the refusal; no traceback
    assert lines[-1].startswith("error: no usable training objects"), r.stderr
    assert all(x.startswith(("note: skipped", "error:")) for x in lines), r.stderr
    r = _cli(str(empty), "-o", str(tmp_path / "run"), "--views-in", "0-3")
    assert r.returncode == 2 and "--views-in" in r.stderr, r.stderr


def test_ddp_two_cpu_processes_equal_one_with_twice_the_batch(spot: Path, tmp_path) -> None:
    """`--devices 2` (DDP over gloo, batch 1 each) ends on the weights of `--devices 1
    --batch-size 2`: the sampler gives the two ranks the halves of the same global batch and
    each object's loss is averaged the same way (seed 0 draws a 2-view then a 1-view batch)."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    common = ["--config", str(config), "--size", str(SIZE), "--views-in", "1-3", "--views-out", "2"]
    common += ["--max-steps", "2", "--val-every", "0", "--accelerator", "cpu"]
    one = _cli(str(spot), "-o", str(tmp_path / "one"), "--batch-size", "2", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(str(spot), "-o", str(tmp_path / "two"), "--devices", "2", *common)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "geolrm.safetensors")
    b = load_file(tmp_path / "two" / "geolrm.safetensors")
    torch.manual_seed(0)  # the runs' initialisation (seed 0)
    init = GeoLRM.from_config(TINY).state_dict()
    num = den = 0.0
    for k in a:
        if a[k].is_floating_point():
            da, db = (a[k] - init[k]).double(), (b[k] - init[k]).double()
            num += float(((da - db) ** 2).sum())
            den += float((da**2).sum())
    # measured 2.5e-6 (the reduction order of float sums; Adam's first steps amplify it where
    # a gradient is ~0); without find_unused_parameters a 1-view batch left buckets unreduced
    # and this was 0.54
    assert den > 0 and (num / den) ** 0.5 < 1e-4, (num / den) ** 0.5
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_export_weights_is_atomic(tmp_path) -> None:
    torch.manual_seed(0)
    model = GeoLRM.from_config(TINY)
    w, c = export_weights(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "geolrm.safetensors"]
    # the file's keys are the model's state_dict keys, which are the official checkpoint's
    # (tests/test_geolrm_model.py::test_full_config_keys_match_official)
    assert set(load_file(w)) == set(model.state_dict())
    again = GeoLRM.from_pretrained(w, config=json.loads(c.read_text()))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_encoder_gradients_do_not_depend_on_the_batch() -> None:
    """The image encoder's weight gradients of a batch of two equal the sum of each item's
    alone. Without ``model.contiguous_grad`` PyTorch's CPU Conv2d -> BatchNorm2d (eval)
    backward gets a batch of one wrong (error 120 at a gradient scale of 86 here), which made
    1-object steps, DDP ranks and 2-object steps disagree."""
    torch.manual_seed(0)
    model = GeoLRM.from_config(TINY).requires_grad_(True)
    enc = model.lrm_generator.encoder.eval()
    x = torch.rand(2, 1, 3, SIZE, SIZE)
    c2w = torch.eye(4).repeat(2, 1, 1, 1)
    c2w[..., 2, 3] = 1.5
    K = torch.tensor([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]]).repeat(2, 1, 1, 1)
    R = torch.randn_like(enc(x, c2w, K).feats)

    def grads(s: slice) -> dict[str, torch.Tensor]:
        enc.zero_grad()
        (enc(x[s], c2w[s], K[s]).feats * R[s]).sum().backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    both, first, second = grads(slice(0, 2)), grads(slice(0, 1)), grads(slice(1, 2))
    for name in ("low_level_encoder.0.weight", "deconv.0.weight"):
        err = float((both[name] - first[name] - second[name]).abs().max())
        assert err < 1e-5 * float(both[name].abs().max()) + 1e-4, (name, err)
