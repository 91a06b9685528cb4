"""Gaussian files: standard 3DGS PLY, other tools' layouts, GeoLRM's own layout, .splat, frames."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipelines.errors import InputError
from pipelines.splats.frames import world_to_file
from pipelines.splats.gaussians import SH_C0, Gaussians, quat_to_matrix
from pipelines.splats.io import load_gaussians, save_gaussians
from pipelines.splats.ply import gaussians_to_ply_bytes, load_ply, save_ply
from pipelines.splats.splat import gaussians_to_splat_bytes, load_splat, save_splat


def random_gaussians(n: int = 200, sh_degree: int = 0, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    sh = None
    if sh_degree:
        sh = 0.1 * torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen)
    return Gaussians(
        means=torch.rand(n, 3, generator=gen) - 0.5,
        scales=torch.rand(n, 3, generator=gen) * 0.02 + 1e-3,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        opacities=torch.rand(n, generator=gen) * 0.98 + 0.01,
        colors=torch.rand(n, 3, generator=gen),
        sh_rest=sh,
    )


def covariances(g: Gaussians) -> torch.Tensor:
    r = quat_to_matrix(g.quats)
    s = torch.diag_embed(g.scales)
    return r @ s @ s @ r.transpose(-1, -2)


def assert_same_gaussians(a: Gaussians, b: Gaussians, atol: float = 1e-6) -> None:
    for name in ("means", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=1e-5)
    # quaternions are defined up to sign: compare the rotations they encode
    torch.testing.assert_close(quat_to_matrix(a.quats), quat_to_matrix(b.quats), atol=1e-5, rtol=0)
    assert (a.sh_rest is None) == (b.sh_rest is None)
    if a.sh_rest is not None:
        torch.testing.assert_close(a.sh_rest, b.sh_rest, atol=1e-5, rtol=1e-5)


def parse_binary_ply(data: bytes) -> tuple[list[str], dict[str, np.ndarray]]:
    """A minimal independent reader (float32 LE only) to check what is on disk."""
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    props = [ln.split()[2] for ln in lines if ln.startswith("property float")]
    n = int(next(ln.split()[2] for ln in lines if ln.startswith("element vertex")))
    arr = np.frombuffer(body, dtype="<f4").reshape(n, len(props))
    return lines, {p: arr[:, i] for i, p in enumerate(props)}


@pytest.mark.parametrize("up", ["-y", "y", "z", None])
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_ply_round_trip(tmp_path, up, sh_degree):
    g = random_gaussians(sh_degree=sh_degree)
    path = save_ply(tmp_path / "m.ply", g, up=up)
    loaded = load_ply(path)
    assert loaded.frame == "geolrm header" and not loaded.activated
    assert_same_gaussians(loaded.gaussians, g)


def test_ply_on_disk_is_standard_3dgs_encoding(tmp_path):
    g = random_gaussians(sh_degree=1)
    lines, cols = parse_binary_ply(gaussians_to_ply_bytes(g, world_to_file("z")))
    assert lines[1] == "format binary_little_endian 1.0"
    order = [ln.split()[2] for ln in lines if ln.startswith("property")]
    assert order[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert order[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert order[18:] == [
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    np.testing.assert_allclose(
        cols["f_dc_1"], (g.colors[:, 1].numpy() - 0.5) / SH_C0, rtol=1e-5, atol=1e-5
    )
    a = g.opacities.numpy().astype(np.float64)
    np.testing.assert_allclose(cols["opacity"], np.log(a / (1 - a)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cols["scale_2"], np.log(g.scales[:, 2].numpy()), rtol=1e-5)
    # f_rest is channel-major: all R coefficients first, then G, then B
    np.testing.assert_allclose(cols["f_rest_0"], g.sh_rest[:, 0, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(cols["f_rest_3"], g.sh_rest[:, 0, 1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(cols["f_rest_8"], g.sh_rest[:, 2, 2].numpy(), rtol=1e-6)
    # w first, normalised
    np.testing.assert_allclose(cols["rot_0"], g.quats[:, 0].numpy(), rtol=1e-6, atol=1e-7)
    assert np.all(cols["nx"] == 0)


def test_up_axes_move_world_up_to_the_file_convention(tmp_path):
    g = random_gaussians(n=3)
    g.means[:] = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    expected = {
        "-y": [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
        "y": [[0, 1, 0], [1, 0, 0], [0, 0, -1]],
        "z": [[0, 0, 1], [1, 0, 0], [0, 1, 0]],
    }
    for up, pts in expected.items():
        _, cols = parse_binary_ply(gaussians_to_ply_bytes(g, world_to_file(up)))
        got = np.stack([cols["x"], cols["y"], cols["z"]], 1)
        np.testing.assert_array_equal(got, np.array(pts, dtype=np.float32))
        # covariances rotate with the frame: Sigma_file = R Sigma_world R^T
        r = world_to_file(up)[:3, :3]
        file_g = load_ply_bytes(
            tmp_path, gaussians_to_ply_bytes(g, world_to_file(up)), assume_z=True
        )
        torch.testing.assert_close(
            covariances(file_g), r @ covariances(g) @ r.T, atol=1e-8, rtol=1e-4
        )


def load_ply_bytes(tmp_path, data: bytes, assume_z: bool = False) -> Gaussians:
    """Load ``data`` ignoring geolrm's frame comment (as a foreign tool would)."""
    text = data.replace(b"comment geolrm world_to_file", b"comment ignored")
    p = tmp_path / "x.ply"
    p.write_bytes(text)
    return load_ply(p, assume_up="z" if assume_z else "-y").gaussians


def write_foreign_ply(
    path, cols: dict[str, np.ndarray], fmt: str = "binary_little_endian", comments=()
):
    names = list(cols)
    n = len(cols[names[0]])
    head = ["ply", f"format {fmt} 1.0", *[f"comment {c}" for c in comments], f"element vertex {n}"]
    types = {
        np.dtype("float32"): "float",
        np.dtype("uint8"): "uchar",
        np.dtype("float64"): "double",
    }
    head += [f"property {types[cols[k].dtype]} {k}" for k in names]
    head += ["element face 0", "property list uchar int vertex_indices", "end_header"]
    if fmt == "ascii":
        body = "\n".join(" ".join(repr(float(cols[k][i])) for k in names) for i in range(n)) + "\n"
        path.write_bytes(("\n".join(head) + "\n").encode() + body.encode())
    else:
        end = "<" if fmt == "binary_little_endian" else ">"
        rec = np.zeros(n, dtype=[(k, end + cols[k].dtype.str[1:]) for k in names])
        for k in names:
            rec[k] = cols[k]
        path.write_bytes(("\n".join(head) + "\n").encode() + rec.tobytes())


def inria_columns(
    g: Gaussians, shuffle_extra: bool = True, up: str = "-y"
) -> dict[str, np.ndarray]:
    """Encode like the INRIA trainer (in the ``up`` file frame) plus an extra property."""
    gf = g.transformed(world_to_file(up))
    cols = {"x": gf.means[:, 0], "y": gf.means[:, 1], "z": gf.means[:, 2]}
    cols |= {f"f_dc_{i}": (gf.colors[:, i] - 0.5) / SH_C0 for i in range(3)}
    if gf.sh_rest is not None:
        rest = gf.sh_rest.transpose(1, 2).reshape(len(g), -1)
        cols |= {f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])}
    cols["opacity"] = torch.logit(gf.opacities.double()).float()
    cols |= {f"scale_{i}": gf.scales[:, i].log() for i in range(3)}
    cols |= {f"rot_{i}": gf.quats[:, i] * 2.5 for i in range(4)}  # unnormalised on disk
    if shuffle_extra:
        cols["semantic_id"] = torch.arange(len(g)).float()
    return {k: v.numpy().astype(np.float32) for k, v in cols.items()}


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian", "ascii"])
def test_reads_other_tools_ply(tmp_path, fmt):
    g = random_gaussians(n=50, sh_degree=2)
    write_foreign_ply(tmp_path / "inria.ply", inria_columns(g), fmt=fmt)
    loaded = load_ply(tmp_path / "inria.ply")  # no frame comment: 3DGS y-down habit assumed
    assert loaded.frame == "assumed up -y" and not loaded.activated
    assert_same_gaussians(loaded.gaussians, g, atol=1e-5)


def test_reads_nerfstudio_vertical_axis_comment(tmp_path):
    g = random_gaussians(n=20)
    cols = inria_columns(g, shuffle_extra=False, up="z")
    write_foreign_ply(tmp_path / "ns.ply", cols, comments=["Vertical Axis: z"])
    loaded = load_ply(tmp_path / "ns.ply")
    assert loaded.frame == "header: z up"
    assert_same_gaussians(loaded.gaussians, g, atol=1e-5)


def test_reads_geolrm_repository_layout(tmp_path):
    """GeoLRM's save_ply writes activated values (rgb as f_dc, plain opacity and scale), z-up."""
    g = random_gaussians(n=64)
    cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    cols |= {f"f_dc_{i}": g.colors[:, i] for i in range(3)}
    cols["opacity"] = g.opacities
    cols |= {f"scale_{i}": g.scales[:, i] for i in range(3)}
    cols |= {f"rot_{i}": g.quats[:, i] for i in range(4)}
    write_foreign_ply(tmp_path / "geolrm.ply", {k: v.numpy() for k, v in cols.items()})
    loaded = load_ply(tmp_path / "geolrm.ply")
    assert loaded.activated and "GeoLRM" in loaded.frame
    assert_same_gaussians(loaded.gaussians, g)


def test_reads_uchar_rgb_colours(tmp_path):
    g = random_gaussians(n=10)
    cols = inria_columns(g, shuffle_extra=False)
    for i in range(3):
        del cols[f"f_dc_{i}"]
    rgb = (g.colors.numpy() * 255).round().astype(np.uint8)
    cols |= {"red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]}
    write_foreign_ply(tmp_path / "rgb.ply", cols)
    out = load_ply(tmp_path / "rgb.ply").gaussians
    torch.testing.assert_close(out.colors, torch.from_numpy(rgb / 255.0).float())


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        (b"hello world, not a ply", "not a PLY"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
         b"property float z\nend_header\n" + bytes(24), "no 3D Gaussian attributes"),
    ],
)  # fmt: skip
def test_bad_ply_files(tmp_path, content, match):
    p = tmp_path / "bad.ply"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_ply(p)


def test_truncated_ply(tmp_path):
    data = gaussians_to_ply_bytes(random_gaussians(n=10))
    (tmp_path / "t.ply").write_bytes(data[:-100])
    with pytest.raises(InputError, match="truncated"):
        load_ply(tmp_path / "t.ply")


def test_splat_layout_and_round_trip(tmp_path):
    g = random_gaussians(n=100)
    data = gaussians_to_splat_bytes(g, up="z")
    assert len(data) == 32 * len(g)
    rec = np.frombuffer(
        data, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)]
    )
    # big and opaque first
    key = (
        rec["s"].astype(np.float64).prod(1)
        * g.opacities.numpy()[np.argsort(-(g.scales.prod(-1) * g.opacities).numpy(), kind="stable")]
    )
    assert np.all(np.diff(key) <= 1e-12)
    # colours quantised to 1/255, rotation to normalize(q)*128+128
    i = int(np.argmin(np.abs(rec["p"] - g.means[0].numpy()).sum(1)))
    np.testing.assert_array_equal(
        rec["c"][i, :3], np.round(g.colors[0].numpy() * 255).astype(np.uint8)
    )
    np.testing.assert_allclose(rec["r"][i] - 128.0, g.quats[0].numpy() * 128, atol=0.51)

    save_splat(tmp_path / "m.splat", g)
    back = load_splat(tmp_path / "m.splat")
    order = torch.tensor(
        [int(np.argmin(np.abs(back.means.numpy() - m).sum(1))) for m in g.means.numpy()]
    )
    back = back[order]
    torch.testing.assert_close(back.means, g.means, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.scales, g.scales, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(back.colors, g.colors, atol=0.5 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(back.opacities, g.opacities, atol=0.5 / 255 + 1e-6, rtol=0)
    dots = (back.quats * g.quats).sum(-1).abs()
    assert dots.min() > 0.999


def test_io_dispatch_and_bad_suffix(tmp_path):
    g = random_gaussians(n=5)
    for name in ("a.ply", "a.splat"):
        save_gaussians(tmp_path / name, g)
        assert len(load_gaussians(tmp_path / name)) == 5
    with pytest.raises(InputError, match="unknown Gaussian file type"):
        save_gaussians(tmp_path / "a.obj", g)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from pipelines.io_utils import atomic_path

    target = tmp_path / "m.ply"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-written")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ply"]
    save_ply(target, random_gaussians(n=5))
    assert len(load_ply(target).gaussians) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ply"]


def test_gaussian_files_load_no_image_reader() -> None:
    """Reading and writing Gaussian files needs the similarity maths of ``pipelines.cameras`` but
    not its image readers: importing the file modules loads neither PIL nor a dataparser."""
    code = (
        "import sys, pipelines.splats.io\n"
        "print(','.join(m for m in ('PIL', 'pipelines.cameras.images',"
        " 'pipelines.cameras.dataparsers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
