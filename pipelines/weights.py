"""Registry of the model weights geolrm uses (``weights.toml``) and a front-end to their caches.

The registry ships inside the package (``pipelines/weights.toml``, read through
:mod:`importlib.resources`, so a wheel or ``pip install .`` finds it as well as the editable
install); ``GEOLRM_WEIGHTS_REGISTRY=/path/to/weights.toml`` replaces it.

Hugging Face artifacts live in the standard HF cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), so files fetched by ``hf download`` or by diffusers /
transformers are found too. URL artifacts live in their own folder: rembg models where rembg
looks for them (``U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``, else ``~/.u2net``), others under
``GEOLRM_CACHE`` (default ``~/.cache/geolrm``) ``/weights``.

Typical use inside a pipeline::

    from pipelines.weights import ensure
    ckpt = ensure("geolrm")        # Path, or MissingWeightsError naming the command to run

Nothing here imports huggingface_hub at module level (the CLI must start fast).
``HF_HUB_OFFLINE=1`` forbids every download, Hugging Face or URL.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import importlib.resources
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import InputError, MissingWeightsError
from pipelines.io_utils import atomic_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

REGISTRY_ENV = "GEOLRM_WEIGHTS_REGISTRY"


def _packaged_registry() -> Path:
    """``weights.toml`` inside the installed ``pipelines`` package (package data).

    geolrm is installed as plain files (editable, wheel or ``pip install .``; never zipped), so
    the resource is a real file and its path can be handed to ``open`` / ``stat``.
    """
    return Path(os.fspath(importlib.resources.files("pipelines") / "weights.toml"))


DEFAULT_REGISTRY = _packaged_registry()
HF_TOKEN_HINT = "an HF token (`hf auth login`, formerly `huggingface-cli login`, or HF_TOKEN)"

# verify() statuses, worst first
MISMATCH = "mismatch"
MISSING = "missing"
UNKNOWN_HASH = "unknown-hash"
OK = "ok"
_SEVERITY = {MISMATCH: 3, MISSING: 2, UNKNOWN_HASH: 1, OK: 0}

_CHUNK = 8 << 20

ByteProgress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``."""


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """One file of an artifact: a path inside the HF repo (or the file name of a URL artifact)."""

    path: str
    sha256: str = ""
    md5: str = ""
    size_bytes: int = 0

    @property
    def is_glob(self) -> bool:
        return any(c in self.path for c in "*?[")


@dataclass(frozen=True)
class Artifact:
    """One entry of ``weights.toml``."""

    name: str
    repo: str
    url: str
    files: tuple[FileSpec, ...]
    revision: str
    size_bytes: int
    sha256: str
    licence: str
    commercial_use: bool
    gated: bool
    used_by: tuple[str, ...]
    description: str
    md5: str = ""
    approx_size: str = ""
    cache: str = ""
    licence_url: str = ""

    @property
    def is_hf(self) -> bool:
        return bool(self.repo)

    @property
    def source(self) -> str:
        """``repo`` (with ``@revision`` when pinned) or the URL."""
        if self.is_hf:
            return f"{self.repo}@{self.revision[:7]}" if self.revision else self.repo
        return self.url

    @property
    def needs_acceptance(self) -> bool:
        """Non-commercial (or unclear) licences must be accepted with ``--accept-license``."""
        return not self.commercial_use

    @property
    def single_file(self) -> bool:
        return len(self.files) == 1 and not self.files[0].is_glob

    def download_command(self) -> str:
        cmd = f"geolrm weights download {self.name}"
        return cmd + " --accept-license" if self.needs_acceptance else cmd


_REQUIRED: dict[str, type] = {
    "name": str,
    "size_bytes": int,
    "sha256": str,
    "licence": str,
    "commercial_use": bool,
    "gated": bool,
    "used_by": list,
    "description": str,
}
_OPTIONAL: dict[str, type] = {
    "repo": str,
    "url": str,
    "revision": str,
    "file": str,
    "files": list,
    "checksums": dict,
    "md5": str,
    "approx_size": str,
    "cache": str,
    "licence_url": str,
}
_HEX = set("0123456789abcdef")


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and set(value) <= _HEX


def _parse_entry(raw: dict, where: str) -> Artifact:
    def bad(msg: str) -> InputError:
        return InputError(f"{where}: {msg}")

    for key in raw:
        if key not in _REQUIRED and key not in _OPTIONAL:
            raise bad(f"unknown field '{key}'")
    for key in _REQUIRED:
        if key not in raw:
            raise bad(f"missing field '{key}'")
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key in raw:
            value = raw[key]
            # bool is an int: refuse it where a number is expected
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise bad(f"field '{key}' must be of type {typ.__name__}")
    name = raw["name"]
    if not name or any(c.isspace() for c in name):
        raise bad(f"invalid name {name!r}")
    if bool(raw.get("repo")) == bool(raw.get("url")):
        raise bad("exactly one of 'repo' or 'url' is required")
    if "file" in raw and "files" in raw:
        raise bad("use 'file' or 'files', not both")
    if "files" in raw:
        paths = raw["files"]
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise bad("'files' must be a non-empty list of paths")
    elif "file" in raw:
        paths = [raw["file"]]
    elif raw.get("url"):
        paths = [raw["url"].rstrip("/").rsplit("/", 1)[-1]]
    else:
        raise bad("'file' or 'files' is required for a Hugging Face repo")
    if len(set(paths)) != len(paths):
        raise bad("duplicate paths in 'files'")
    if raw.get("url") and len(paths) != 1:
        raise bad("a URL artifact has exactly one file")
    if raw["size_bytes"] < 0:
        raise bad("'size_bytes' must be >= 0 (0 = unknown)")
    sha256, md5 = raw["sha256"].lower(), raw.get("md5", "").lower()
    if sha256 and not _is_hex(sha256, 64):
        raise bad("'sha256' must be 64 hex digits or empty")
    if md5 and not _is_hex(md5, 32):
        raise bad("'md5' must be 32 hex digits or empty")
    if not all(isinstance(u, str) for u in raw["used_by"]):
        raise bad("'used_by' must be a list of strings")
    cache = raw.get("cache", "")
    if cache not in ("", "u2net", "geolrm"):
        raise bad("'cache' must be 'u2net' or 'geolrm'")
    checksums = {k: str(v).lower() for k, v in raw.get("checksums", {}).items()}
    for path, digest in checksums.items():
        if path not in paths:
            raise bad(f"'checksums' names {path!r}, which is not in 'files'")
        if not _is_hex(digest, 64):
            raise bad(f"'checksums' entry for {path!r} must be a sha256 (64 hex digits)")
    single = len(paths) == 1 and not FileSpec(paths[0]).is_glob
    if not single and (sha256 or md5):
        raise bad("multi-file entries keep hashes in 'checksums', not 'sha256'/'md5'")
    if single:
        files = (
            FileSpec(
                paths[0],
                sha256=sha256 or checksums.get(paths[0], ""),
                md5=md5,
                size_bytes=raw["size_bytes"],
            ),
        )
    else:
        files = tuple(FileSpec(p, sha256=checksums.get(p, "")) for p in paths)
    return Artifact(
        name=name,
        repo=raw.get("repo", ""),
        url=raw.get("url", ""),
        files=files,
        revision=raw.get("revision", ""),
        size_bytes=raw["size_bytes"],
        sha256=sha256,
        licence=raw["licence"],
        commercial_use=raw["commercial_use"],
        gated=raw["gated"],
        used_by=tuple(raw["used_by"]),
        description=raw["description"],
        md5=md5,
        approx_size=raw.get("approx_size", ""),
        cache=cache,
        licence_url=raw.get("licence_url", ""),
    )


_LOADED: dict[tuple[str, int, int], dict[str, Artifact]] = {}


def registry_path() -> Path:
    """The registry in use: ``$GEOLRM_WEIGHTS_REGISTRY`` if set, else the packaged one."""
    override = os.environ.get(REGISTRY_ENV)
    return Path(override).expanduser() if override else DEFAULT_REGISTRY


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Artifact]:
    """Parse and validate a registry file; returns ``{name: Artifact}`` in file order."""
    path = Path(path) if path is not None else registry_path()
    try:
        st = path.stat()
    except OSError:
        raise InputError(f"weights registry not found: {path}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _LOADED:
        return _LOADED[key]
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"weights registry {path} is not valid TOML: {e}") from None
    entries = data.get("artifact", [])
    if not isinstance(entries, list) or not entries:
        raise InputError(f"weights registry {path} has no artifact entries")
    out: dict[str, Artifact] = {}
    for i, raw in enumerate(entries):
        label = raw.get("name", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        a = _parse_entry(raw, f"{path.name}: artifact '{label}'")
        if a.name in out:
            raise InputError(f"{path.name}: duplicate artifact name '{a.name}'")
        out[a.name] = a
    _LOADED[key] = out
    return out


def list_artifacts() -> list[Artifact]:
    """Every artifact of the registry, in file order."""
    return list(load_registry().values())


def artifact(name: Artifact | str) -> Artifact:
    """The registry entry called ``name``; an unknown name is an :class:`InputError`."""
    if isinstance(name, Artifact):
        return name
    reg = load_registry()
    if name in reg:
        return reg[name]
    close = difflib.get_close_matches(name, list(reg), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise InputError(f"unknown model artifact '{name}'{hint}; known: {', '.join(reg)}")


# ---------------------------------------------------------------------------------------------
# Cache locations
# ---------------------------------------------------------------------------------------------


def _expand(p: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(p)))


def hf_cache_dir() -> Path:
    """The HF hub cache, read from the environment now (not when huggingface_hub was imported)."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return _expand(explicit)
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
    )
    return _expand(home) / "hub"


def u2net_home() -> Path:
    """rembg's model folder: ``U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``, else ``~/.u2net``."""
    env = os.environ
    return _expand(env.get("U2NET_HOME") or os.path.join(env.get("XDG_DATA_HOME") or "~", ".u2net"))


def geolrm_cache_dir() -> Path:
    """``GEOLRM_CACHE``, else ``$XDG_CACHE_HOME/geolrm``, else ``~/.cache/geolrm``."""
    env = os.environ
    return _expand(
        env.get("GEOLRM_CACHE") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "geolrm")
    )


def cache_location(a: Artifact | str) -> Path:
    """The folder an artifact is (or would be) cached in."""
    a = artifact(a)
    if a.is_hf:
        return hf_cache_dir() / ("models--" + a.repo.replace("/", "--"))
    if a.cache == "u2net":
        return u2net_home()
    return geolrm_cache_dir() / "weights"


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value, read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------------------------------------
# Local lookup
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    root: Path | None  # HF snapshot folder / URL cache folder
    found: tuple[tuple[FileSpec, Path], ...]  # globs expanded to concrete files
    missing: tuple[str, ...]


def _hf_snapshot_dir(a: Artifact) -> Path | None:
    repo_cache = cache_location(a)
    revision = a.revision or "main"
    ref = repo_cache / "refs" / revision
    if ref.is_file():
        revision = ref.read_text().strip()
    snap = repo_cache / "snapshots" / revision
    return snap if snap.is_dir() else None


def _locate(a: Artifact) -> _Located:
    found: list[tuple[FileSpec, Path]] = []
    missing: list[str] = []
    if not a.is_hf:
        root = cache_location(a)
        p = root / a.files[0].path
        if p.is_file():
            found.append((a.files[0], p))
        else:
            missing.append(a.files[0].path)
        return _Located(root, tuple(found), tuple(missing))

    from huggingface_hub import try_to_load_from_cache

    cache_dir = hf_cache_dir()
    snap = _hf_snapshot_dir(a)
    for spec in a.files:
        if spec.is_glob:
            matches = sorted(p for p in snap.glob(spec.path) if p.is_file()) if snap else []
            if matches:
                found.extend((FileSpec(p.relative_to(snap).as_posix()), p) for p in matches)
            else:
                missing.append(spec.path)
            continue
        hit = try_to_load_from_cache(
            a.repo, spec.path, cache_dir=cache_dir, revision=a.revision or None
        )
        if isinstance(hit, str) and os.path.isfile(hit):
            found.append((spec, Path(hit)))
        else:
            missing.append(spec.path)
    return _Located(snap, tuple(found), tuple(missing))


def local_path(name: Artifact | str) -> Path | None:
    """The cached artifact, or ``None`` when any of its files is missing.

    A single-file artifact gives the file; a multi-file one gives the snapshot folder (use it
    as ``from_pretrained(path, subfolder=...)``).
    """
    a = artifact(name)
    loc = _locate(a)
    if loc.missing or not loc.found:
        return None
    if a.single_file:
        return loc.found[0][1]
    return loc.root


def missing_message(a: Artifact | str) -> str:
    """One line: which artifact is missing and the exact command that fetches it."""
    a = artifact(a)
    msg = (
        f"model weights '{a.name}' are not in the local cache ({cache_location(a)}); "
        f"fetch them with: {a.download_command()}"
    )
    if a.needs_acceptance:
        msg += f" (licence: {a.licence}, not for commercial use)"
    if a.gated:
        msg += (
            f"; {a.repo} is gated: accept its terms at https://huggingface.co/{a.repo} "
            f"and provide {HF_TOKEN_HINT}"
        )
    return msg


def ensure(name: Artifact | str) -> Path:
    """The local path of ``name``; :class:`MissingWeightsError` (one line) when not cached."""
    a = artifact(name)
    p = local_path(a)
    if p is None:
        raise MissingWeightsError(missing_message(a))
    return p


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCheck:
    path: str  # path inside the repo / file name
    status: str  # ok | mismatch | missing | unknown-hash
    detail: str
    local: Path | None


@dataclass(frozen=True)
class VerifyResult:
    name: str
    files: tuple[FileCheck, ...]

    @property
    def status(self) -> str:
        """The worst file status (mismatch > missing > unknown-hash > ok)."""
        return max((f.status for f in self.files), key=_SEVERITY.__getitem__, default=MISSING)

    @property
    def ok(self) -> bool:
        return self.status != MISMATCH


def _digests(
    path: Path, algos: tuple[str, ...], progress: ByteProgress | None = None
) -> dict[str, str]:
    hashers = {a: hashlib.new(a, usedforsecurity=False) for a in algos}
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _check_file(spec: FileSpec, path: Path, progress: ByteProgress | None = None) -> FileCheck:
    size = path.stat().st_size
    if spec.size_bytes and size != spec.size_bytes:
        return FileCheck(
            spec.path, MISMATCH, f"size {size} bytes, expected {spec.size_bytes}", path
        )
    algos = tuple(a for a, want in (("sha256", spec.sha256), ("md5", spec.md5)) if want)
    if not algos:
        what = "size matches, " if spec.size_bytes else ""
        return FileCheck(spec.path, UNKNOWN_HASH, f"{what}{size} bytes, no published hash", path)
    got = _digests(path, algos, progress)
    for algo, want in (("sha256", spec.sha256), ("md5", spec.md5)):
        if want and got[algo] != want:
            return FileCheck(spec.path, MISMATCH, f"{algo} {got[algo]}, expected {want}", path)
    return FileCheck(spec.path, OK, f"{'+'.join(algos)} matches ({size} bytes)", path)


def verify(
    name: Artifact | str, progress: Callable[[str, int, int | None], None] | None = None
) -> VerifyResult:
    """Check what is in the cache against the registry's size / sha256 (or md5).

    Every file gets ``missing``, ``ok``, ``mismatch`` or ``unknown-hash`` (present, but no
    published hash to compare with). ``progress(path, done, total)`` is called while hashing.
    """
    a = artifact(name)
    loc = _locate(a)
    checks = [FileCheck(p, MISSING, "not in the cache", None) for p in loc.missing]
    for spec, path in loc.found:
        cb = (lambda d, t, _p=spec.path: progress(_p, d, t)) if progress else None
        checks.append(_check_file(spec, path, cb))
    order = {s.path: i for i, s in enumerate(a.files)}
    checks.sort(key=lambda c: order.get(c.path, len(order)))
    return VerifyResult(a.name, tuple(checks))


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def licence_notice(a: Artifact | str) -> str:
    a = artifact(a)
    where = f" ({a.licence_url})" if a.licence_url else ""
    return f"'{a.name}' is licensed under {a.licence}{where}: not cleared for commercial use"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _offline_error(a: Artifact, why: str) -> InputError:
    return InputError(
        f"cannot download '{a.name}' from {a.source}: offline ({why}); connect to the network "
        f"and re-run `{a.download_command()}`, or copy the files into {cache_location(a)}"
    )


def download(
    name: Artifact | str,
    accept_license: bool = False,
    token: str | None = None,
    progress: ByteProgress | None = None,
    force: bool = False,
) -> Path:
    """Fetch an artifact into its cache and return :func:`local_path`.

    Hugging Face files go through ``hf_hub_download`` / ``snapshot_download`` (standard cache,
    their own progress bars); URL files are streamed with ``progress(done, total)`` and renamed
    into place atomically. Published sizes / hashes are checked. An artifact already cached is
    returned as is unless ``force``.
    """
    a = artifact(name)
    if a.needs_acceptance and not accept_license:
        raise InputError(
            f"{licence_notice(a)}; read the licence, then re-run with --accept-license: "
            f"{a.download_command()}"
        )
    if not force:
        existing = local_path(a)
        if existing is not None:
            return existing
    if is_offline():
        raise _offline_error(a, "HF_HUB_OFFLINE is set")
    if a.is_hf:
        _download_hf(a, token, force)
    else:
        _download_url(a, progress)
    p = local_path(a)
    if p is None:  # pragma: no cover - the hub reported success but the cache lacks a file
        raise InputError(
            f"download of '{a.name}' finished but the cache is incomplete: {cache_location(a)}"
        )
    return p


def _download_hf(a: Artifact, token: str | None, force: bool) -> None:
    from huggingface_hub import errors as hfe
    from huggingface_hub import hf_hub_download, snapshot_download

    cache_dir = hf_cache_dir()
    revision = a.revision or None
    gated_hint = (
        f"accept the terms at https://huggingface.co/{a.repo} and provide {HF_TOKEN_HINT}, "
        f"then re-run `{a.download_command()}`"
    )
    try:
        if any(s.is_glob for s in a.files):
            snapshot_download(
                a.repo,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=[s.path for s in a.files],
                token=token,
                force_download=force,
            )
        else:
            for spec in a.files:
                hf_hub_download(
                    a.repo,
                    spec.path,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    force_download=force,
                )
    except hfe.GatedRepoError:
        raise InputError(f"'{a.name}': {a.repo} is gated; {gated_hint}") from None
    except hfe.RepositoryNotFoundError:
        raise InputError(
            f"'{a.name}': repo {a.repo} not found or not accessible; if it is gated or private, "
            f"{gated_hint}"
        ) from None
    except hfe.RevisionNotFoundError:
        raise InputError(f"'{a.name}': revision {a.revision!r} not found in {a.repo}") from None
    except (hfe.OfflineModeIsEnabled, hfe.LocalEntryNotFoundError) as e:
        raise _offline_error(a, _first_line(e)) from None
    except hfe.RemoteEntryNotFoundError as e:
        raise InputError(f"'{a.name}': a file is missing from {a.repo}: {_first_line(e)}") from None
    except hfe.HfHubHTTPError as e:
        raise InputError(f"download of '{a.name}' failed: {_first_line(e)}") from None
    except (hfe.HTTPError, ConnectionError, TimeoutError) as e:
        raise _offline_error(a, f"network error: {_first_line(e)}") from None
    except OSError as e:
        raise InputError(f"download of '{a.name}' failed: {_first_line(e)}") from None
    # check what arrived against the published numbers
    for spec, path in _locate(a).found:
        if spec.sha256 or spec.md5 or spec.size_bytes:
            check = _check_file(spec, path)
            if check.status == MISMATCH:
                raise InputError(
                    f"'{a.name}': {spec.path} failed verification ({check.detail}); "
                    f"re-run `{a.download_command()} --force`"
                )


def _download_url(a: Artifact, progress: ByteProgress | None) -> None:
    spec = a.files[0]
    dest = cache_location(a) / spec.path
    request = urllib.request.Request(a.url, headers={"User-Agent": "geolrm-weights"})
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as e:
        raise InputError(
            f"download of '{a.name}' from {a.url} failed: HTTP {e.code} {e.reason}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise _offline_error(a, f"network error: {_first_line(reason)}") from None
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else (spec.size_bytes or None)
    with response, atomic_path(dest) as tmp:
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        done = 0
        try:
            with open(tmp, "wb") as fh:
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    sha.update(chunk)
                    md5.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except (OSError, http.client.HTTPException) as e:
            raise _offline_error(a, f"network error after {done} bytes: {_first_line(e)}") from None
        problems = []
        if spec.size_bytes and done != spec.size_bytes:
            problems.append(f"size {done} bytes, expected {spec.size_bytes}")
        if spec.sha256 and sha.hexdigest() != spec.sha256:
            problems.append(f"sha256 {sha.hexdigest()}, expected {spec.sha256}")
        if spec.md5 and md5.hexdigest() != spec.md5:
            problems.append(f"md5 {md5.hexdigest()}, expected {spec.md5}")
        if problems:
            raise InputError(
                f"download of '{a.name}' from {a.url} is corrupt ({'; '.join(problems)}); "
                "nothing was kept"
            )
