"""Writing a :class:`~pipelines.scene.Scene` into an output folder, all or nothing.

:class:`Staging` is the one staging writer of ``recon`` and ``gen``: files are written into a
hidden folder inside the output folder and renamed into place only when everything is
written, so a failure or an interrupt leaves no half-written file (and removes the output
folder again when it was created for this run). Paths named as inputs are never replaced.

:func:`write_scene` writes the files of :mod:`pipelines.layout` (``model.ply``,
``cameras.json``, ``model_frame.json``, ``raw.safetensors``, ``turntable.mp4``) into a folder;
:func:`write_mesh` adds ``mesh.glb``. :func:`write_outputs` is both inside one staging.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines import layout
from pipelines.cameras.cameras import Cameras
from pipelines.cameras.similarity import similarity_to_json
from pipelines.defaults import MeshConfig, TurntableConfig
from pipelines.errors import InputError
from pipelines.export.media import video_writer
from pipelines.io_utils import write_text_atomic
from pipelines.mesh import export_mesh, gaussians_to_mesh
from pipelines.render import render_frames, turntable_cameras
from pipelines.scene import Scene
from pipelines.splats.frames import matrix_to_text
from pipelines.splats.gaussians import Gaussians
from pipelines.splats.ply import save_ply

__all__ = [
    "STAGING_PREFIX",
    "Staging",
    "remove_staging",
    "check_output_dir",
    "write_mesh",
    "write_outputs",
    "write_scene",
]

PathLike = str | os.PathLike

#: Names of the hidden staging folders (``.geolrm-<kind>-XXXX``) inside an output folder.
STAGING_PREFIX = ".geolrm-"


# --------------------------------------------------------------------------------------------
# the staging writer


def check_output_dir(out_dir: PathLike, names: Iterable[str] = (), protect: Sequence = ()) -> None:
    """Refuse an output folder that is a file, or whose outputs ``names`` would replace one of
    the paths in ``protect`` (the inputs)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir} is a file; pass a folder for the outputs")
    inputs = {Path(p).resolve() for p in protect}
    for name in names:
        p = out_dir / name
        if p.resolve() in inputs:
            raise InputError(f"writing {p} would overwrite an input file; choose another -o folder")


class Staging:
    """``with Staging(out_dir, "recon") as stage:`` write into ``stage.path``; on leaving the
    block without an error every entry of it moves into ``out_dir`` (replacing what is there).

    Args:
        out_dir: the output folder (created, with its parents, when missing).
        kind: names the hidden folder (``.geolrm-<kind>-XXXX``).
        protect: paths never replaced (the inputs); checked before anything moves.
        stale: names of an earlier run's outputs to remove when this run did not write them
            (``gen``: a ``mesh.glb`` left from a run with ``--mesh``).

    After the block, ``written`` lists the moved paths (entries in the order they were first
    named with :meth:`file`, then any others in sorted order).
    """

    def __init__(
        self,
        out_dir: PathLike,
        kind: str,
        protect: Sequence[PathLike] = (),
        stale: Iterable[str] = (),
    ) -> None:
        self.out_dir = Path(out_dir)
        self.kind = kind
        self.protect = list(protect)
        self.stale = tuple(stale)
        self.path = self.out_dir
        self.written: list[Path] = []
        self._order: list[str] = []
        self._created: list[Path] = []

    def file(self, name: str) -> Path:
        """The staging path of output ``name`` (recorded, so it moves in that order)."""
        if name not in self._order:
            self._order.append(name)
        return self.path / name

    def __enter__(self) -> Staging:
        check_output_dir(self.out_dir)
        for parent in (self.out_dir, *self.out_dir.parents):
            if parent.exists():
                break
            self._created.append(parent)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{self.kind}-", dir=self.out_dir))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self.written = self._commit()
        except BaseException:
            self._discard()
            raise

    def _commit(self) -> list[Path]:
        items = [n for n in self._order if (self.path / n).exists()]
        items += sorted(
            p.name
            for p in self.path.iterdir()
            if not p.name.startswith(".") and p.name not in items
        )
        check_output_dir(self.out_dir, items, self.protect)
        moved = []
        for name in items:
            target = self.out_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(self.path / name, target)
            moved.append(target)
        shutil.rmtree(self.path, ignore_errors=True)
        for name in self.stale:
            old = self.out_dir / name
            if name not in items and old.is_file():
                old.unlink()
        return moved

    def _discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def remove_staging(out_dir: PathLike) -> list[Path]:
    """Remove the staging folders a killed process left in ``out_dir`` (a process that ends
    normally removes its own); returns them. Only for a folder no other run writes into."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    left = [p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith(STAGING_PREFIX)]
    for p in left:
        shutil.rmtree(p, ignore_errors=True)
    return left


# --------------------------------------------------------------------------------------------
# the files


def _cameras_json(scene: Scene, base_dir: Path) -> dict:
    data = scene.cameras.to_transforms_json(base_dir=base_dir)
    data["geolrm"] = {
        "note": (
            "poses in the input cameras' world frame; intrinsics for the square model input "
            f"({scene.cameras.width} px: images padded square with white, then resized)"
        ),
        "size": scene.cameras.width,
        "model_from_user": scene.model_from_user.tolist(),
        "model_frame_transform_matrices": scene.cameras_model.c2w.double().tolist(),
    }
    return data


def _raw_layout(g: Gaussians) -> torch.Tensor:
    """``[N, 14]`` activated Gaussians in GeoLRM's output layout."""
    return torch.cat(
        [g.means, g.opacities[:, None], g.scales, g.quats, g.colors.clamp(0.0, 1.0)], -1
    ).float()


def _write_raw(path: Path, scene: Scene) -> None:
    # one file layout for every scene: without the network there are no anchors (empty
    # tensors, gs_per_token 0) and the Gaussians are the fitted ones
    extras = scene.geolrm
    if extras is not None:
        anchors, logits = extras.anchors, extras.occupancy_logits
        raw, k = extras.raw_gaussians, extras.gs_per_token
    else:
        anchors, logits = torch.zeros(0, 3), torch.zeros(0, 0, 0)
        raw, k = _raw_layout(scene.gaussians_model), 0
    tensors = {
        "anchors": anchors.contiguous(),
        "occupancy_logits": logits.contiguous(),
        "gaussians": raw.contiguous(),
        "model_from_user": scene.model_from_user.contiguous(),
        "c2ws_model": scene.cameras_model.c2w.contiguous(),
        "Ks_normalized": scene.cameras_model.normalized_K().contiguous(),
    }
    meta = {
        "format": "pt",
        "frame": "model (z-up, object in [-0.5, 0.5]^3); x_model = model_from_user @ x_user",
        "gaussians_layout": "xyz(3) opacity(1) scale(3) rotation_wxyz(4) rgb(3), activated",
        "gs_per_token": str(k),
        "anchor_count": str(int(anchors.shape[0])),
    }
    save_file(tensors, str(path), metadata=meta)


def _write_video(
    path: Path,
    g: Gaussians,
    turntable: TurntableConfig,
    device: str,
    on_frame: Callable[[], None] | None,
) -> None:

    cams = turntable_cameras(
        g, turntable.frames, turntable.elevation_deg, turntable.fov_deg, turntable.resolution
    )
    with video_writer(path, turntable.fps) as append:
        for frame in render_frames(g, cams, "white", device, on_frame=on_frame):
            append(frame.rgb)


def write_scene(
    scene: Scene,
    stage: Staging,
    base_dir: Path | None = None,
    save_raw: bool = False,
    video: TurntableConfig | None = None,
    device: str = "cpu",
    on_video_frame: Callable[[], None] | None = None,
    up: str | None = None,
) -> None:
    """Write the scene's files into ``stage`` (see :mod:`pipelines.layout`).

    ``model.ply`` (standard 3DGS layout, user frame, header frame = identity; with ``up`` the
    user frame is taken as z-up and the file is written for viewers with that up axis, e.g.
    ``"-y"`` for views from a generator rig), ``cameras.json`` (nerfstudio transforms of the
    cameras used, user frame; image paths relative to ``base_dir``, default the output
    folder), ``model_frame.json`` (the similarity ``M``), with ``save_raw``
    ``raw.safetensors`` (anchors, occupancy logits, raw Gaussians, model frame), with
    ``video`` ``turntable.mp4`` (model frame, z-up).
    """
    base_dir = stage.out_dir if base_dir is None else base_dir
    m_text = matrix_to_text(scene.model_from_user)
    save_ply(
        stage.file(layout.MODEL),
        scene.gaussians,
        up=up,
        comments=[
            "geolrm recon: Gaussians in the input cameras' world frame"
            + ("" if up is None else f" (z-up), written with up axis {up}"),
            f"geolrm model_from_user {m_text}",
        ],
    )
    cams_json = json.dumps(_cameras_json(scene, base_dir), indent=1) + "\n"
    write_text_atomic(stage.file(layout.CAMERAS), cams_json)
    transform = similarity_to_json(scene.model_from_user)
    transform["description"] = (
        "similarity from the input cameras' world frame to GeoLRM's model frame "
        "(z-up, object in [-0.5, 0.5]^3, cameras at radius ~1.5); model.ply is in the input "
        "frame, turntable.mp4 and raw.safetensors in the model frame"
    )
    write_text_atomic(stage.file(layout.TRANSFORM), json.dumps(transform, indent=1) + "\n")
    if save_raw:
        _write_raw(stage.file(layout.RAW), scene)
    if video is not None:
        _write_video(stage.file(layout.VIDEO), scene.gaussians_model, video, device, on_video_frame)


def write_mesh(
    path: Path,
    g: Gaussians,
    cameras: Cameras | None,
    spec: MeshConfig,
    device: str = "cpu",
    on_view: Callable[[int], None] | None = None,
    on_stage: Callable[[str, int | None], None] | None = None,
) -> None:
    """Mesh ``g`` by :func:`pipelines.mesh.gaussians_to_mesh` with ``spec``'s settings (the
    input ``cameras``, same frame as ``g``, drive the unseen-surface fill) and export it to
    ``path`` (format from the suffix)."""

    made = gaussians_to_mesh(
        g,
        views=spec.views,
        resolution=spec.resolution,
        faces=spec.faces,
        device=device,
        on_view=on_view,
        texture_size=spec.texture_size,
        on_stage=on_stage,
        cameras=cameras,
    )
    export_mesh(made.mesh, path)


def write_outputs(
    scene: Scene,
    out_dir: PathLike,
    save_raw: bool = False,
    video: TurntableConfig | None = TurntableConfig(),
    device: str = "cpu",
    protect: Sequence[PathLike] = (),
    on_video_frame: Callable[[], None] | None = None,
    up: str | None = None,
    mesh: MeshConfig | None = None,
    on_mesh_view: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write the outputs of ``recon`` into ``out_dir``; all or nothing (:class:`Staging`).

    The files of :func:`write_scene` and, with ``mesh``, ``mesh.glb`` (user frame taken as
    z-up, as ``geolrm mesh model.ply`` reads it, with the input cameras for its unseen-surface
    fill; ``on_mesh_view`` reports the fusion renders). Paths in ``protect`` (the inputs) are
    never overwritten.

    Returns:
        The written paths.
    """
    out_dir = Path(out_dir)
    names = layout.recon_names(save_raw, video is not None, mesh is not None)
    check_output_dir(out_dir, names, protect)
    with Staging(out_dir, "recon", protect=protect) as stage:
        write_scene(scene, stage, out_dir, save_raw, video, device, on_video_frame, up)
        if mesh is not None:
            write_mesh(
                stage.file(layout.MESH),
                scene.gaussians,
                scene.cameras,
                mesh,
                device,
                on_mesh_view,
            )
    return stage.written
