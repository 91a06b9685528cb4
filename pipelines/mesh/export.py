"""Write meshes for viewers: ``.glb`` (glTF, y-up), ``.obj`` + ``.mtl`` (y-up), ``.ply`` (z-up).

Meshes arrive in geolrm's z-up world. Each format is written in its viewers' habit:

* ``.glb`` -- glTF is y-up by specification (Blender's importer and three.js rely on it). One
  node, vertex colours as ``COLOR_0``, smooth vertex normals, and a matte material
  (metallic 0, roughness 1) so the colours are not darkened by glTF's metallic default.
* ``.obj`` -- y-up (what Blender's and three.js's OBJ importers assume), vertex colours as the
  common ``v x y z r g b`` extension, and a ``.mtl`` beside it with one white matte material.
* ``.ply`` -- binary little-endian with RGBA vertex colours, kept z-up (Blender's PLY importer
  default: Z up; MeshLab and Open3D have no up convention).

Every file appears whole or not at all (:func:`pipelines.io_utils.atomic_path`).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import InputError
from pipelines.io_utils import atomic_path
from pipelines.splats.frames import world_to_file

__all__ = ["MESH_FORMATS", "DEFAULT_UP", "export_mesh"]

MESH_FORMATS = (".glb", ".obj", ".ply")
DEFAULT_UP = {".glb": "y", ".obj": "y", ".ply": "z"}
_MATERIAL = "geolrm"


def _in_frame(mesh, up: str):
    """A copy of ``mesh`` with vertices rotated from the z-up world to the ``up`` frame."""
    out = mesh.copy()
    rot = world_to_file(up).double().numpy()
    out.apply_transform(rot)
    return out


def export_mesh(mesh, path: str | Path, up: str | None = None) -> list[Path]:
    """Write ``mesh`` (a ``trimesh.Trimesh`` in the z-up world) by the extension of ``path``.

    Args:
        mesh: the mesh, optionally with RGBA vertex colours.
        path: ``.glb``, ``.obj`` (a ``.mtl`` of the same stem is written beside it) or ``.ply``.
        up: the file's up axis (``"y"``, ``"z"`` or ``"-y"``); None = the format's habit
            (:data:`DEFAULT_UP`).

    Returns:
        The files written.

    Raises:
        InputError: unknown extension or up axis.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise InputError(
            f"{path}: unknown mesh format {suffix or '(none)'!r}; use {', '.join(MESH_FORMATS)}"
        )
    m = _in_frame(mesh, up or DEFAULT_UP[suffix])
    if suffix == ".glb":
        return [_write_glb(m, path)]
    if suffix == ".obj":
        return _write_obj(m, path)
    return [_write_ply(m, path)]


def _add_material(tree: dict) -> None:
    """glTF post-processor: one matte white material on every primitive."""
    tree["materials"] = [
        {
            "name": _MATERIAL,
            "pbrMetallicRoughness": {
                "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                "metallicFactor": 0.0,
                "roughnessFactor": 1.0,
            },
            "doubleSided": False,
        }
    ]
    for mesh in tree.get("meshes", []):
        for prim in mesh.get("primitives", []):
            prim["material"] = 0


def _write_glb(mesh, path: Path) -> Path:
    import trimesh
    from trimesh.exchange.gltf import export_glb

    scene = trimesh.Scene()
    scene.add_geometry(mesh, geom_name="mesh", node_name="mesh")
    data = export_glb(scene, include_normals=True, tree_postprocessor=_add_material)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _write_obj(mesh, path: Path) -> list[Path]:
    from trimesh.exchange.obj import export_obj

    mtl_path = path.with_suffix(".mtl")
    body = export_obj(
        mesh, include_normals=False, include_color=True, include_texture=False, header=None
    )
    text = (
        "# geolrm mesh (y-up); vertex colours as 'v x y z r g b'\n"
        f"mtllib {mtl_path.name}\nusemtl {_MATERIAL}\n{body}"
    )
    if not text.endswith("\n"):
        text += "\n"
    mtl = (
        f"# geolrm material for {path.name}\nnewmtl {_MATERIAL}\n"
        "Ka 0.000 0.000 0.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\nd 1.0\nillum 1\n"
    )
    with atomic_path(mtl_path) as tmp_mtl, atomic_path(path) as tmp_obj:
        tmp_mtl.write_text(mtl, encoding="utf-8")
        tmp_obj.write_text(text, encoding="utf-8")
    return [path, mtl_path]


def _write_ply(mesh, path: Path) -> Path:
    from trimesh.exchange.ply import export_ply

    data = export_ply(mesh, encoding="binary", vertex_normal=False, include_attributes=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
