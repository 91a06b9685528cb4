"""Model-weights registry (weights.toml), cache lookup, verify, download guards, `geolrm weights`.

Nothing here touches the network: hash tests use a temporary registry (never invented hashes
for real entries) and fake files laid out like the HF cache; URL downloads use a local server.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines import weights as w
from pipelines.errors import InputError, MissingWeightsError

REPO_ROOT = Path(__file__).resolve().parents[1]
GEOLRM = Path(sys.executable).with_name("geolrm")


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty HF / rembg / geolrm caches and the real registry."""
    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))
    monkeypatch.setenv("GEOLRM_CACHE", str(tmp_path / "geolrm_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(w.REGISTRY_ENV, raising=False)
    return tmp_path


def put_in_hf_cache(
    hub: Path, repo: str, files: dict[str, bytes], commit: str = "c0ffee" * 6 + "abcd", ref="main"
) -> Path:
    """Lay files out like huggingface_hub does: blobs/, snapshots/<commit>/ symlinks, refs/."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    for rel, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    if ref:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return snap


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_registry(path: Path, entries: list[str]) -> Path:
    path.write_text("schema = 1\n\n" + "\n".join(f"[[artifact]]\n{e}\n" for e in entries))
    return path


def entry(name: str, **fields) -> str:
    base = {
        "size_bytes": 0,
        "sha256": "",
        "licence": "Apache-2.0",
        "commercial_use": True,
        "gated": False,
        "used_by": ["tests"],
        "description": "test artifact",
    }
    base.update(fields)
    lines = [f'name = "{name}"']
    for key, value in base.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, list)):
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        elif isinstance(value, dict):
            inner = ", ".join(f'"{k}" = "{v}"' for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines)


@pytest.fixture
def tmp_registry(caches, monkeypatch):
    """Point GEOLRM_WEIGHTS_REGISTRY at a registry written by the test."""

    def make(*entries: str) -> Path:
        path = write_registry(caches / "weights.toml", list(entries))
        monkeypatch.setenv(w.REGISTRY_ENV, str(path))
        return path

    return make


# ---------------------------------------------------------------------------------------------
# The real registry
# ---------------------------------------------------------------------------------------------


def test_registry_loads_with_required_fields(caches):
    arts = w.list_artifacts()
    names = [a.name for a in arts]
    assert len(names) == len(set(names))
    for a in arts:
        assert isinstance(a.name, str) and a.name
        assert bool(a.repo) != bool(a.url), a.name
        assert a.files and all(isinstance(f.path, str) and f.path for f in a.files)
        assert isinstance(a.revision, str)
        assert isinstance(a.size_bytes, int) and not isinstance(a.size_bytes, bool)
        assert a.size_bytes >= 0
        assert a.sha256 == "" or len(a.sha256) == 64
        assert all(f.sha256 == "" or len(f.sha256) == 64 for f in a.files)
        assert isinstance(a.licence, str) and a.licence
        assert isinstance(a.commercial_use, bool) and isinstance(a.gated, bool)
        assert a.used_by and all(isinstance(u, str) for u in a.used_by)
        assert isinstance(a.description, str) and a.description
        if a.url:
            assert a.url.startswith("https://")
    for required in (
        "geolrm",
        "zero123pp",
        "instantmesh-unet",
        "sv3d-p",
        "u2net",
        "u2netp",
        "isnet-general-use",
        "silueta",
    ):
        assert required in names


def test_registry_ships_inside_the_package(caches):
    """The default registry is package data of ``pipelines`` read through importlib.resources,
    so a wheel or ``pip install .`` finds it; nothing is read from the repository root."""
    import importlib.resources

    import pipelines

    packaged = importlib.resources.files("pipelines") / "weights.toml"
    assert packaged.is_file()
    assert w.DEFAULT_REGISTRY.resolve() == Path(pipelines.__file__).resolve().with_name(
        "weights.toml"
    )
    assert w.registry_path() == w.DEFAULT_REGISTRY
    assert not (REPO_ROOT / "weights.toml").exists()
    reg = w.load_registry()
    assert "geolrm" in reg and list(reg) == list(w.load_registry(packaged))


def test_registry_override_env_wins(tmp_registry):
    path = tmp_registry(entry("only-this", repo="org/only", file="x.bin"))
    assert w.registry_path() == path != w.DEFAULT_REGISTRY
    assert [a.name for a in w.list_artifacts()] == ["only-this"]


def test_missing_override_is_one_line_error(caches, monkeypatch):
    monkeypatch.setenv(w.REGISTRY_ENV, str(caches / "nowhere.toml"))
    with pytest.raises(InputError, match="weights registry not found"):
        w.list_artifacts()


def test_registry_flags_licences_and_gating(caches):
    for name in ("zero123pp", "instantmesh-unet", "sv3d-p"):
        a = w.artifact(name)
        assert not a.commercial_use and a.needs_acceptance
        assert "--accept-license" in a.download_command()
    assert w.artifact("sv3d-p").gated
    assert not w.artifact("zero123pp").gated
    assert w.artifact("geolrm").commercial_use
    assert w.artifact("geolrm").download_command() == "geolrm weights download geolrm"


def test_zero123pp_is_one_artifact_with_all_components(caches):
    a = w.artifact("zero123pp")
    paths = [f.path for f in a.files]
    assert a.revision == "2da07e89919e1a130c9b5add1584c70c7aa065fd"
    for component in (
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "vision_encoder/model.safetensors",
        "feature_extractor_clip/preprocessor_config.json",
        "feature_extractor_vae/preprocessor_config.json",
        "scheduler/scheduler_config.json",
    ):
        assert component in paths
    assert any(p.startswith("tokenizer/") for p in paths)


def test_rembg_models_live_in_u2net_home(caches):
    a = w.artifact("u2net")
    assert w.cache_location(a) == caches / "u2net"
    assert a.files[0].path == "u2net.onnx" and a.md5


def test_unknown_name_lists_known_names(caches):
    with pytest.raises(InputError) as e:
        w.artifact("geolmr")
    msg = str(e.value)
    assert "'geolmr'" in msg and "did you mean 'geolrm'" in msg and "zero123pp" in msg
    assert "\n" not in msg


# ---------------------------------------------------------------------------------------------
# ensure / local_path
# ---------------------------------------------------------------------------------------------


def test_ensure_on_empty_cache_names_the_command(caches):
    with pytest.raises(MissingWeightsError) as e:
        w.ensure("geolrm")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'geolrm'" in msg and "geolrm weights download geolrm" in msg
    assert "--accept-license" not in msg

    with pytest.raises(MissingWeightsError) as e:
        w.ensure("zero123pp")
    assert "geolrm weights download zero123pp --accept-license" in str(e.value)

    with pytest.raises(MissingWeightsError) as e:
        w.ensure("sv3d-p")
    msg = str(e.value)
    assert "geolrm weights download sv3d-p --accept-license" in msg
    assert "gated" in msg and "HF_TOKEN" in msg and "huggingface-cli login" in msg
    assert "\n" not in msg

    with pytest.raises(MissingWeightsError) as e:
        w.ensure("u2net")
    assert "geolrm weights download u2net" in str(e.value)


def test_local_path_finds_file_in_hf_cache_layout(caches):
    snap = put_in_hf_cache(caches / "hf_home" / "hub", "LinShan/GeoLRM", {"geolrm.ckpt": b"ckpt"})
    p = w.local_path("geolrm")
    assert p == snap / "geolrm.ckpt" and p.read_bytes() == b"ckpt"
    assert w.ensure("geolrm") == p


def test_local_path_follows_hf_home_without_hf_hub_cache(caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(caches / "other_home"))
    assert w.local_path("geolrm") is None
    put_in_hf_cache(caches / "other_home" / "hub", "LinShan/GeoLRM", {"geolrm.ckpt": b"x"})
    assert w.local_path("geolrm") is not None


def test_pinned_revision_resolves_snapshot_without_ref(caches):
    a = w.artifact("zero123pp")
    files = {f.path: b"{}" for f in a.files if not f.is_glob}
    files["tokenizer/vocab.json"] = b"{}"
    hub = caches / "hf_home" / "hub"
    snap = put_in_hf_cache(hub, a.repo, files, commit=a.revision, ref=None)
    assert w.local_path(a) == snap  # a multi-file artifact resolves to its snapshot folder
    # a missing component makes the whole artifact missing
    (snap / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert w.local_path(a) is None
    with pytest.raises(MissingWeightsError, match="zero123pp --accept-license"):
        w.ensure(a)


def test_url_artifact_found_in_u2net_home(caches):
    (caches / "u2net").mkdir()
    (caches / "u2net" / "u2netp.onnx").write_bytes(b"onnx")
    assert w.local_path("u2netp") == caches / "u2net" / "u2netp.onnx"


# ---------------------------------------------------------------------------------------------
# verify (temporary registry: hashes of our own test bytes)
# ---------------------------------------------------------------------------------------------


def test_verify_detects_sha256_match_and_mismatch(tmp_registry, caches):
    good, bad = b"good weights", b"tampered weights"
    tmp_registry(
        entry("good", repo="org/good", file="model.bin", sha256=sha(good), size_bytes=len(good)),
        entry("bad", repo="org/bad", file="model.bin", sha256=sha(good)),
        entry("nohash", repo="org/nohash", file="model.bin"),
        entry("absent", repo="org/absent", file="model.bin", sha256=sha(good)),
        entry(
            "multi",
            repo="org/multi",
            files=["a.bin", "b.bin", "tok/*"],
            checksums={"a.bin": sha(good)},
        ),
    )
    hub = caches / "hf_home" / "hub"
    put_in_hf_cache(hub, "org/good", {"model.bin": good})
    put_in_hf_cache(hub, "org/bad", {"model.bin": bad})
    put_in_hf_cache(hub, "org/nohash", {"model.bin": bad})
    put_in_hf_cache(
        hub, "org/multi", {"a.bin": good, "b.bin": bad, "tok/vocab.json": b"{}", "tok/m.txt": b""}
    )

    r = w.verify("good")
    assert r.status == w.OK and r.ok and r.files[0].local is not None
    r = w.verify("bad")
    assert r.status == w.MISMATCH and not r.ok
    assert sha(bad) in r.files[0].detail and sha(good) in r.files[0].detail
    assert w.verify("nohash").status == w.UNKNOWN_HASH
    assert w.verify("absent").status == w.MISSING
    r = w.verify("multi")
    statuses = {f.path: f.status for f in r.files}
    assert statuses == {
        "a.bin": w.OK,
        "b.bin": w.UNKNOWN_HASH,
        "tok/m.txt": w.UNKNOWN_HASH,
        "tok/vocab.json": w.UNKNOWN_HASH,
    }
    assert r.status == w.UNKNOWN_HASH and r.ok


def test_verify_size_and_md5(tmp_registry, caches):
    data = b"onnx bytes"
    tmp_registry(
        entry("sized", repo="org/sized", file="m.bin", size_bytes=len(data) + 1),
        entry(
            "md5ok",
            url="https://example.invalid/x/md5ok.onnx",
            cache="u2net",
            md5=hashlib.md5(data).hexdigest(),
        ),
        entry("md5bad", url="https://example.invalid/x/md5bad.onnx", cache="u2net", md5="0" * 32),
    )
    put_in_hf_cache(caches / "hf_home" / "hub", "org/sized", {"m.bin": data})
    (caches / "u2net").mkdir()
    (caches / "u2net" / "md5ok.onnx").write_bytes(data)
    (caches / "u2net" / "md5bad.onnx").write_bytes(data)
    r = w.verify("sized")
    assert r.status == w.MISMATCH and "size" in r.files[0].detail
    assert w.verify("md5ok").status == w.OK
    assert w.verify("md5bad").status == w.MISMATCH


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"repo": "a/b", "url": "https://x/y", "file": "f"}, "exactly one of"),
        ({"repo": "a/b"}, "'file' or 'files'"),
        ({"repo": "a/b", "file": "f", "sha256": "abc"}, "64 hex"),
        ({"repo": "a/b", "file": "f", "size_bytes": True}, "size_bytes"),
        ({"repo": "a/b", "file": "f", "colour": "red"}, "unknown field"),
        ({"repo": "a/b", "files": ["f", "g"], "checksums": {"h": "0" * 64}}, "not in 'files'"),
    ],
)
def test_registry_validation(tmp_registry, fields, problem):
    tmp_registry(entry("x", **fields))
    with pytest.raises(InputError, match=problem):
        w.list_artifacts()


def test_registry_rejects_duplicate_names(tmp_registry):
    tmp_registry(entry("x", repo="a/b", file="f"), entry("x", repo="a/c", file="f"))
    with pytest.raises(InputError, match="duplicate"):
        w.list_artifacts()


# ---------------------------------------------------------------------------------------------
# download guards (no network)
# ---------------------------------------------------------------------------------------------


def test_download_non_commercial_needs_acceptance(caches):
    for name in ("zero123pp", "sv3d-p", "instantmesh-unet"):
        with pytest.raises(InputError) as e:
            w.download(name)
        msg = str(e.value)
        assert "--accept-license" in msg and w.artifact(name).licence in msg
        assert "\n" not in msg


def test_download_offline_is_one_line(caches):
    for name, extra in (("geolrm", {}), ("zero123pp", {"accept_license": True}), ("u2net", {})):
        with pytest.raises(InputError) as e:
            w.download(name, **extra)
        msg = str(e.value)
        assert "\n" not in msg and "offline" in msg and f"'{name}'" in msg


def test_download_returns_cached_copy_even_offline(caches):
    put_in_hf_cache(caches / "hf_home" / "hub", "LinShan/GeoLRM", {"geolrm.ckpt": b"c"})
    assert w.download("geolrm").read_bytes() == b"c"


def _hub_error(cls, message):
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def test_download_maps_hub_errors(caches, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors as hfe

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def gated(*args, **kwargs):
        raise _hub_error(hfe.GatedRepoError, "401 gated\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(InputError) as e:
        w.download("sv3d-p", accept_license=True)
    msg = str(e.value)
    assert "gated" in msg and "HF_TOKEN" in msg and "\n" not in msg

    def no_network(*args, **kwargs):
        raise hfe.LocalEntryNotFoundError("cannot reach the Hub\nsecond line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(InputError) as e:
        w.download("geolrm")
    msg = str(e.value)
    assert "offline" in msg and "'geolrm'" in msg and "\n" not in msg


def test_download_hf_checks_published_hash(tmp_registry, caches, monkeypatch):
    import huggingface_hub

    good, bad = b"published", b"something else"
    tmp_registry(entry("h", repo="org/h", file="m.bin", sha256=sha(good)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub = caches / "hf_home" / "hub"

    def fake_download(repo_id, filename, **kwargs):
        assert kwargs["cache_dir"] == hub
        put_in_hf_cache(hub, repo_id, {filename: fake_download.data})
        return str(hub)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    fake_download.data = bad
    with pytest.raises(InputError, match="failed verification"):
        w.download("h")


class _Server:
    """A local HTTP server serving ``files`` (name -> bytes)."""

    def __init__(self, files: dict[str, bytes]):
        files_ = files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                data = files_.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_url_download_streams_verifies_and_renames(tmp_registry, caches, monkeypatch):
    payload = os.urandom(3 << 20)
    server = _Server({"m.onnx": payload, "corrupt.onnx": payload})
    try:
        tmp_registry(
            entry("m", url=f"{server.url}/m.onnx", cache="u2net", sha256=sha(payload)),
            entry("corrupt", url=f"{server.url}/corrupt.onnx", cache="u2net", sha256="0" * 64),
            entry("gone", url=f"{server.url}/gone.onnx", cache="u2net"),
        )
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        seen = []
        p = w.download("m", progress=lambda done, total: seen.append((done, total)))
        assert p == caches / "u2net" / "m.onnx" and p.read_bytes() == payload
        assert seen[-1] == (len(payload), len(payload))
        assert w.verify("m").status == w.OK

        with pytest.raises(InputError, match="corrupt"):
            w.download("corrupt")
        assert sorted(x.name for x in (caches / "u2net").iterdir()) == ["m.onnx"]  # no leftovers

        with pytest.raises(InputError, match="HTTP 404"):
            w.download("gone")
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def run_weights(args, monkeypatch, capsys):
    """Run the `weights` sub-app through the real run_cli (exit codes, one-line errors)."""
    from geolrm_cli.commands.weights import app
    from geolrm_cli.console import run_cli

    monkeypatch.setattr(sys, "argv", ["geolrm-weights", *args])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        code = run_cli(app)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list(caches, monkeypatch, capsys):
    put_in_hf_cache(caches / "hf_home" / "hub", "LinShan/GeoLRM", {"geolrm.ckpt": b"c"})
    code, out, _ = run_weights(["list"], monkeypatch, capsys)
    assert code == 0
    assert "geolrm" in out and "zero123pp" in out and "CC-BY-NC-4.0" in out and "u2net" in out
    geolrm_row = next(line for line in out.splitlines() if "LinShan/GeoLRM" in line)
    assert "✓" in geolrm_row
    sv3d_row = next(line for line in out.splitlines() if "stabilityai/sv3d" in line)
    assert "✗" in sv3d_row and "yes" in sv3d_row


def test_cli_path(caches, monkeypatch, capsys):
    snap = put_in_hf_cache(caches / "hf_home" / "hub", "LinShan/GeoLRM", {"geolrm.ckpt": b"c"})
    code, out, err = run_weights(["path", "geolrm"], monkeypatch, capsys)
    assert code == 0 and out.strip() == str(snap / "geolrm.ckpt") and err == ""

    code, out, err = run_weights(["path", "sv3d-p"], monkeypatch, capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "geolrm weights download sv3d-p --accept-license" in lines[0]


def test_cli_bad_name_is_one_line_exit_2(caches, monkeypatch, capsys):
    for args in (["path", "nope"], ["download", "nope"], ["verify", "nope"]):
        code, out, err = run_weights(args, monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2, args
        assert len(lines) == 1 and lines[0].startswith("error: unknown model artifact 'nope'")
        assert "Traceback" not in err


def test_cli_download_guards(caches, monkeypatch, capsys):
    code, _, err = run_weights(["download", "zero123pp"], monkeypatch, capsys)
    assert code == 2 and "--accept-license" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_weights(["download", "geolrm"], monkeypatch, capsys)
    assert code == 2 and "offline" in err and len(err.strip().splitlines()) == 1


def test_cli_verify_exit_codes(tmp_registry, caches, monkeypatch, capsys):
    good = b"good"
    tmp_registry(
        entry("good", repo="org/good", file="m.bin", sha256=sha(good)),
        entry("bad", repo="org/bad", file="m.bin", sha256=sha(good)),
        entry("absent", repo="org/absent", file="m.bin"),
    )
    hub = caches / "hf_home" / "hub"
    put_in_hf_cache(hub, "org/good", {"m.bin": good})
    put_in_hf_cache(hub, "org/bad", {"m.bin": b"evil"})
    code, out, _ = run_weights(["verify", "good"], monkeypatch, capsys)
    assert code == 0 and "ok" in out
    code, out, _ = run_weights(["verify", "absent"], monkeypatch, capsys)
    assert code == 0 and "missing" in out
    code, out, _ = run_weights(["verify"], monkeypatch, capsys)
    assert code == 1 and "mismatch" in out and "missing" in out


def test_cli_convert_bad_input(caches, monkeypatch, capsys, tmp_path):
    code, _, err = run_weights(
        ["convert", str(tmp_path / "nope.ckpt"), "-o", str(tmp_path / "o.safetensors")],
        monkeypatch,
        capsys,
    )
    assert code == 2 and err.startswith("error: checkpoint not found")
    src = tmp_path / "model.ckpt"
    src.write_bytes(b"not a checkpoint")
    code, _, err = run_weights(
        ["convert", str(src), "-o", str(tmp_path / "o.bin")], monkeypatch, capsys
    )
    assert code == 2 and ".safetensors" in err


def test_cli_help_has_examples(monkeypatch, capsys):
    for args in (["--help"], ["download", "--help"], ["verify", "--help"], ["path", "--help"]):
        code, out, _ = run_weights(args, monkeypatch, capsys)
        assert code == 0 and "geolrm weights" in out, args


def test_geolrm_entry_point(caches):
    """The installed `geolrm` command: `weights list` works, a bad name is one line, exit 2."""
    if not GEOLRM.exists():
        pytest.skip(f"console script not installed at {GEOLRM}")
    env = {**os.environ, "COLUMNS": "200"}
    probe = subprocess.run(
        [sys.executable, "-c", "import geolrm_cli.app"], capture_output=True, text=True, env=env
    )
    if probe.returncode != 0:
        pytest.skip(f"geolrm_cli.app does not import yet: {probe.stderr.strip().splitlines()[-1]}")
    r = subprocess.run([str(GEOLRM), "weights", "list"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "zero123pp" in r.stdout
    r = subprocess.run(
        [str(GEOLRM), "weights", "path", "bogus"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr
