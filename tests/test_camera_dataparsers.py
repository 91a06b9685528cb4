"""Tests for pipelines.cameras.dataparsers: parse_transforms reports the one transform it
applies (the uniform scale divided out of a rotation block) next to the cameras."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from pipelines.cameras import orbit_poses
from pipelines.cameras.dataparsers import ParsedTransforms, load_transforms, parse_transforms
from pipelines.errors import Note

SPOT = Path(__file__).parents[1] / "examples" / "spot"


def test_rigid_file_reports_no_transform() -> None:
    parsed = parse_transforms(SPOT / "transforms_train.json")
    assert isinstance(parsed, ParsedTransforms)
    assert parsed.rotation_scales == (1.0,) * 21
    cams = load_transforms(SPOT / "transforms_train.json")
    assert torch.equal(parsed.cameras.c2w, cams.c2w) and torch.equal(parsed.cameras.K, cams.K)
    assert parsed.cameras.image_paths == cams.image_paths


def test_scaled_rotations_are_reported(tmp_path: Path) -> None:
    poses = orbit_poses([0.0, 40.0, 80.0], [10.0, 10.0, 10.0]).double().numpy()
    frames = []
    for i, (pose, s) in enumerate(zip(poses, (0.21, 1.0, 0.5), strict=True)):
        m = pose.copy()
        m[:3, :3] *= s
        frames.append({"file_path": f"{i}.png", "transform_matrix": m.tolist()})
    meta = {"w": 8, "h": 8, "fl_x": 10.0, "frames": frames}
    path = tmp_path / "cams.json"
    path.write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        parsed = parse_transforms(path, require_images=False)
    notes = [str(w.message) for w in seen if issubclass(w.category, Note)]
    assert len(notes) == 1 and "2 of 3" in notes[0] and "(0.21 to 0.5)" in notes[0]
    np.testing.assert_allclose(parsed.rotation_scales, (0.21, 1.0, 0.5), rtol=1e-6)
    # the reported scale is what was divided out: the written rotation is scale * the camera's
    for pose, s, c2w in zip(poses, parsed.rotation_scales, parsed.cameras.c2w, strict=True):
        written = pose[:3, :3] * (1.0 if s == 1.0 else round(s, 2))
        np.testing.assert_allclose(s * c2w[:3, :3].double().numpy(), written, atol=1e-6)
        np.testing.assert_allclose(c2w[:3, 3].double().numpy(), pose[:3, 3], atol=1e-6)
