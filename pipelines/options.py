"""The option sets of the two workflows, ``geolrm recon`` (:class:`ReconOptions`) and
``geolrm gen`` (:class:`GenOptions`): every field's default is the library's default, which the
CLI's options read too (``tests/test_cli_defaults.py`` checks that they agree). Standard library
only, so that ``geolrm --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.defaults import (
    DEFAULT_TEXTURE_SIZE,
    MIN_OPACITY,
    MV_DEFAULTS,
    OPTIMIZE_RESOLUTION,
    RIG_ELEVATION_DEG,
    SEED,
    MeshConfig,
    TurntableConfig,
)

__all__ = ["GenOptions", "ReconOptions"]

_TURNTABLE = TurntableConfig()
_MESH = MeshConfig()


@dataclass
class _Turntable:
    """The turntable options of ``recon`` and ``gen``.

    Attributes:
        video / video_frames / video_resolution / fps: ``turntable.mp4``.
    """

    video: bool = True
    video_frames: int = _TURNTABLE.frames
    video_resolution: int = _TURNTABLE.resolution
    fps: int = _TURNTABLE.fps

    def turntable(self) -> TurntableConfig | None:
        """The turntable these options ask for (None with ``video=False``)."""
        if not self.video:
            return None
        return replace(
            _TURNTABLE, frames=self.video_frames, resolution=self.video_resolution, fps=self.fps
        )


@dataclass
class ReconOptions(_Turntable):
    """Everything ``geolrm recon`` can set (:func:`pipelines.recon.recon`).

    Attributes:
        cameras: a camera file (transforms.json) or a named rig (``zero123pp``, ``sv3d``);
            None: the ``transforms.json`` of the views folder (see
            :func:`pipelines.reconstruct.resolve_inputs`).
        method: ``geolrm`` (the feed-forward network) or ``optimize`` (no network: fit
            Gaussians to the views from their visual hull).
        checkpoint / config / size / min_opacity / max_seq_len / precision: GeoLRM (size None:
            the rig's input size, :data:`~pipelines.defaults.DEFAULT_SIZE` for own cameras).
        refine: with ``geolrm``, then optimise its Gaussians for this many steps.
        iterations: with ``optimize``, the steps (None: the optimiser's default).
        resolution: size in pixels the views are fitted at (``optimize``, ``refine``).
        save_raw: also write ``raw.safetensors``; the turntable options come from the base.
        mesh / mesh_resolution / texture / texture_size: ``mesh.glb`` (``texture`` implies
            ``mesh``).
        rig_elevation / official_cameras: the SV3D rig (as ``resolve_inputs``).
        device: an already resolved torch device string.
        seed: GeoLRM's anchor subset; the optimiser's samples.
    """

    cameras: str | Path | None = None
    method: str = "geolrm"
    checkpoint: Path | None = None
    config: Path | dict | None = None
    size: int | None = None
    min_opacity: float = MIN_OPACITY
    max_seq_len: int | None = None
    save_raw: bool = False
    mesh: bool = False
    mesh_resolution: int = _MESH.resolution
    texture: bool = False
    texture_size: int = DEFAULT_TEXTURE_SIZE
    rig_elevation: float = RIG_ELEVATION_DEG
    official_cameras: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = SEED
    refine: int = 0
    iterations: int | None = None
    resolution: int = OPTIMIZE_RESOLUTION

    def mesh_config(self) -> MeshConfig | None:
        """The mesh these options ask for (None without ``mesh`` or ``texture``)."""
        if not (self.mesh or self.texture):
            return None
        return replace(
            _MESH,
            resolution=self.mesh_resolution,
            texture_size=self.texture_size if self.texture else None,
        )


@dataclass
class GenOptions(_Turntable):
    """Everything ``geolrm gen`` can set (None = the model's default, see
    :data:`~pipelines.defaults.MV_DEFAULTS`).

    Attributes:
        mv: ``zero123pp`` or ``sv3d``.
        views: views fed to GeoLRM (Zero123++: 6 or 4; SV3D: 1-21, official subsets).
        steps: denoising steps.
        guidance: classifier-free guidance (SV3D: the peak of the triangle schedule).
        seed: one seed for every stage.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (already resolved; on MPS the renders,
            mesh and refinement run on the CPU, see :func:`pipelines.device.stage_device`).
        precision: ``auto`` (fp16 diffusion on CUDA and MPS, fp32 on the CPU; GeoLRM fp32),
            ``fp32``, ``fp16``, ``bf16`` (CUDA only; the diffusion weights and GeoLRM's autocast).
        low_vram: fp16 weights and model CPU offload (CUDA).
        remove_bg / rembg_model / foreground_ratio: background removal and framing.
        unet: Zero123++ UNet: ``instantmesh`` (white background, default), ``original``
            (grey background) or a path to a UNet state dict (white background).
        mv_weights: a local multi-view model (Zero123++: diffusers folder; SV3D: the
            ``sv3d_p.safetensors`` file or a folder holding it) instead of the registry's.
        tile: view size of the multi-view model (320 / 576; smaller only for tiny test models).
        elevation: SV3D camera elevation in degrees.
        official_cameras: SV3D frame i at azimuth ``i * 360 / 21`` as GeoLRM's official script
            assigns (its output, rotated -17.14 deg about z), not ``(i + 1) * 360 / 21``.
        checkpoint / config / size / max_seq_len: GeoLRM (as ``geolrm recon``).
        min_opacity: GeoLRM's Gaussians below this opacity are dropped (0 keeps all).
        refine: refinement steps after GeoLRM (0 = none).
        mesh / mesh_resolution / mesh_faces: ``mesh.glb``.
        texture_size: with ``mesh``, UV-unwrap it and bake a square texture of this many
            texels a side (None: vertex colours).
        up: up axis of ``model.ply`` for viewers (``-y``: the 3DGS / SuperSplat habit).
    """

    mv: str = "zero123pp"
    views: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = SEED
    device: str = "cpu"
    precision: str = "auto"
    low_vram: bool = False
    remove_bg: bool = True
    rembg_model: str = "u2net"
    foreground_ratio: float = 0.85
    unet: str = "instantmesh"
    mv_weights: Path | None = None
    tile: int | None = None
    elevation: float = RIG_ELEVATION_DEG
    official_cameras: bool = False
    checkpoint: Path | None = None
    config: Path | dict | None = None
    size: int | None = None
    max_seq_len: int | None = None
    min_opacity: float = MIN_OPACITY
    refine: int = 0
    mesh: bool = False
    mesh_resolution: int = _MESH.resolution
    mesh_faces: int = _MESH.faces
    texture_size: int | None = None
    up: str = "-y"

    def get(self, key: str):
        """The option ``key``, or the multi-view model's default when it is None."""
        value = getattr(self, key)
        return getattr(MV_DEFAULTS[self.mv], key) if value is None else value

    def mesh_config(self) -> MeshConfig:
        """The mesh these options ask for."""
        return replace(
            _MESH,
            resolution=self.mesh_resolution,
            faces=self.mesh_faces,
            texture_size=self.texture_size,
        )
