"""Write meshes for viewers: ``.glb`` (glTF, y-up), ``.obj`` + ``.mtl`` (y-up), ``.ply`` (z-up).

Meshes arrive in geolrm's z-up world. Each format is written in its viewers' habit:

* ``.glb`` -- glTF is y-up by specification (Blender's importer and three.js rely on it). One
  node, vertex colours as ``COLOR_0``, smooth vertex normals, and a matte material
  (metallic 0, roughness 1) so the colours are not darkened by glTF's metallic default. A
  textured mesh (:func:`pipelines.mesh.texture.texture_mesh`) has ``TEXCOORD_0`` instead of
  colours and the texture embedded as a PNG, the material's ``baseColorTexture``.
* ``.obj`` -- y-up (what Blender's and three.js's OBJ importers assume), vertex colours as the
  common ``v x y z r g b`` extension, and a ``.mtl`` beside it with one white matte material.
  A textured mesh writes ``vt`` coordinates, ``map_Kd <stem>.png`` in the ``.mtl`` and the
  texture as ``<stem>.png`` beside it.
* ``.ply`` -- binary little-endian with RGBA vertex colours, kept z-up (Blender's PLY importer
  default: Z up; MeshLab and Open3D have no up convention). It has no place for a texture: a
  textured mesh is refused (:class:`~pipelines.errors.InputError`).

Every file appears whole or not at all (:func:`pipelines.io_utils.atomic_path`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipelines.errors import InputError
from pipelines.io_utils import atomic_path
from pipelines.splats.frames import world_to_file

__all__ = [
    "DEFAULT_UP",
    "MESH_FORMATS",
    "TEXTURE_FORMATS",
    "check_texture_format",
    "export_mesh",
    "texture_image",
]

MESH_FORMATS = (".glb", ".obj", ".ply")
TEXTURE_FORMATS = (".glb", ".obj")
DEFAULT_UP = {".glb": "y", ".obj": "y", ".ply": "z"}
_MATERIAL = "geolrm"


def _in_frame(mesh, up: str):
    """A copy of ``mesh`` with vertices rotated from the z-up world to the ``up`` frame."""
    out = mesh.copy()
    rot = world_to_file(up).double().numpy()
    out.apply_transform(rot)
    return out


def texture_image(mesh):
    """The base-colour texture (a PIL image) of a textured ``mesh``, or None."""
    visual = getattr(mesh, "visual", None)
    if getattr(visual, "kind", None) != "texture" or getattr(visual, "uv", None) is None:
        return None
    material = visual.material
    image = getattr(material, "baseColorTexture", None)
    return image if image is not None else getattr(material, "image", None)


def check_texture_format(path: str | Path) -> None:
    """Raise :class:`InputError` unless ``path``'s format can hold a texture."""
    path = Path(path)
    if path.suffix.lower() == ".ply":
        raise InputError(f"{path}: .ply stores vertex colours only; use .glb or .obj for --texture")
    if path.suffix.lower() not in TEXTURE_FORMATS:
        raise InputError(
            f"{path}: unknown mesh format {path.suffix or '(none)'!r}; use "
            f"{', '.join(TEXTURE_FORMATS)} for a textured mesh"
        )


def export_mesh(mesh, path: str | Path, up: str | None = None) -> list[Path]:
    """Write ``mesh`` (a ``trimesh.Trimesh`` in the z-up world) by the extension of ``path``.

    Args:
        mesh: the mesh, with RGBA vertex colours, or with UVs and a base-colour texture
            (:func:`pipelines.mesh.texture.texture_mesh`; ``.glb`` and ``.obj`` only).
        path: ``.glb``, ``.obj`` (a ``.mtl`` of the same stem is written beside it, and a
            ``.png`` for a textured mesh) or ``.ply``.
        up: the file's up axis (``"y"``, ``"z"`` or ``"-y"``); None = the format's habit
            (:data:`DEFAULT_UP`).

    Returns:
        The files written.

    Raises:
        InputError: unknown extension or up axis, or a textured mesh to ``.ply``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise InputError(
            f"{path}: unknown mesh format {suffix or '(none)'!r}; use {', '.join(MESH_FORMATS)}"
        )
    if texture_image(mesh) is not None:
        check_texture_format(path)
    m = _in_frame(mesh, up or DEFAULT_UP[suffix])
    if suffix == ".glb":
        return [_write_glb(m, path)]
    if suffix == ".obj":
        return _write_obj(m, path)
    return [_write_ply(m, path)]


def _add_material(tree: dict) -> None:
    """glTF post-processor: one matte white material on every primitive, keeping the base
    colour texture trimesh wrote for a textured mesh."""
    old = (tree.get("materials") or [{}])[0].get("pbrMetallicRoughness", {})
    pbr = {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0}
    if "baseColorTexture" in old:
        pbr["baseColorTexture"] = old["baseColorTexture"]
    tree["materials"] = [{"name": _MATERIAL, "pbrMetallicRoughness": pbr, "doubleSided": False}]
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
    if texture_image(mesh) is not None:
        return _write_textured_obj(mesh, path, mtl_path)
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


def _obj_rows(tag: str, values, fmt: str) -> str:
    """``tag v0 v1 ...`` lines for the rows of ``values``."""
    buf = io.StringIO()
    np.savetxt(buf, values, fmt=fmt, delimiter=" ")
    return "".join(f"{tag} {line}\n" for line in buf.getvalue().splitlines())


def _write_textured_obj(mesh, path: Path, mtl_path: Path) -> list[Path]:
    """``.obj`` with ``vt`` + ``.mtl`` with ``map_Kd`` + the ``.png`` texture, all atomic."""
    png_path = path.with_suffix(".png")
    faces = np.asarray(mesh.faces, np.int64) + 1  # vertex i has UV i: "f a/a b/b c/c"
    text = (
        "# geolrm textured mesh (y-up)\n"
        f"mtllib {mtl_path.name}\nusemtl {_MATERIAL}\n"
        + _obj_rows("v", np.asarray(mesh.vertices), "%.7g")
        + _obj_rows("vt", np.asarray(mesh.visual.uv), "%.7g")
        + _obj_rows("f", np.repeat(faces, 2, axis=1), "%d/%d %d/%d %d/%d")
    )
    mtl = (
        f"# geolrm material for {path.name}\nnewmtl {_MATERIAL}\n"
        "Ka 0.000 0.000 0.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\nd 1.0\nillum 1\n"
        f"map_Kd {png_path.name}\n"
    )
    image = texture_image(mesh)
    with (
        atomic_path(png_path) as tmp_png,
        atomic_path(mtl_path) as tmp_mtl,
        atomic_path(path) as tmp_obj,
    ):
        image.save(tmp_png, format="PNG")
        tmp_mtl.write_text(mtl, encoding="utf-8")
        tmp_obj.write_text(text, encoding="utf-8")
    return [path, mtl_path, png_path]


def _write_ply(mesh, path: Path) -> Path:
    from trimesh.exchange.ply import export_ply

    data = export_ply(mesh, encoding="binary", vertex_normal=False, include_attributes=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
