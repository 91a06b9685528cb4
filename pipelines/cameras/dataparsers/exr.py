"""A small OpenEXR reader and writer in NumPy (no OpenEXR / OpenCV in the environment).

Enough for G-Objaverse's ``_nd.exr`` (normal + depth) files: single-part **scanline** images
with ``HALF``, ``FLOAT`` or ``UINT`` channels, compressed ``NONE``, ``ZIPS`` or ``ZIP`` (zlib
after OpenEXR's byte interleave and delta predictor), or ``RLE`` (read only, and untested: no
sample file). Tiled, deep and multi-part files and the other codecs (PIZ, PXR24, B44, DWA) are
refused with a one-line :class:`~pipelines.errors.InputError` naming a conversion. Layout
references: the OpenEXR file-layout document (magic, version flags, header attributes, offset
table, chunks).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from pipelines.cameras.cameras import PathLike
from pipelines.errors import InputError, path_error

__all__ = ["COMPRESSIONS", "read_exr", "write_exr"]

_MAGIC = 20000630
#: compression id -> (name, scanlines per chunk); None: not readable here
COMPRESSIONS: dict[int, tuple[str, int | None]] = {
    0: ("NONE", 1),
    1: ("RLE", 1),
    2: ("ZIPS", 1),
    3: ("ZIP", 16),
    4: ("PIZ", None),
    5: ("PXR24", None),
    6: ("B44", None),
    7: ("B44A", None),
    8: ("DWAA", None),
    9: ("DWAB", None),
}
_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
_FIX = "convert it to a ZIP-compressed scanline EXR (e.g. oiiotool IN --compression zip -o OUT)"


def _predict_decode(data: bytes) -> bytes:
    """Undo OpenEXR's delta predictor and byte interleave (RLE and ZIP codecs)."""
    d = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    if len(d) == 0:
        return b""
    d[1:] -= 128
    t = (np.cumsum(d) & 0xFF).astype(np.uint8)
    half = (len(t) + 1) // 2
    out = np.empty_like(t)
    out[0::2] = t[:half]
    out[1::2] = t[half:]
    return out.tobytes()


def _predict_encode(data: bytes) -> bytes:
    b = np.frombuffer(data, dtype=np.uint8)
    t = np.concatenate([b[0::2], b[1::2]]).astype(np.int64)
    d = t.copy()
    d[1:] = (t[1:] - t[:-1] + 128) & 0xFF
    return d.astype(np.uint8).tobytes()


def _rle_decode(data: bytes, size: int) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data) and len(out) < size:
        n = struct.unpack_from("b", data, i)[0]
        i += 1
        if n < 0:
            out += data[i : i - n]
            i -= n
        else:
            out += data[i : i + 1] * (n + 1)
            i += 1
    return bytes(out)


def _cstr(buf: bytes, i: int) -> tuple[str, int]:
    j = buf.index(b"\0", i)
    return buf[i:j].decode("latin-1"), j + 1


def read_exr(path: PathLike) -> dict[str, np.ndarray]:
    """The channels of a scanline EXR, ``{name: [H, W] array}`` (float16 / float32 / uint32 as
    stored), rows top to bottom.

    Raises:
        InputError: not an EXR, or a layout / codec this reader does not handle (one line).
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise path_error(path, f"cannot read ({e.strerror})", "check the path") from None
    if len(buf) < 8 or struct.unpack_from("<i", buf, 0)[0] != _MAGIC:
        raise path_error(path, "not an OpenEXR file", "write the depth as an .exr")
    flags = struct.unpack_from("<i", buf, 4)[0]
    if flags & 0x200 or flags & 0x800 or flags & 0x1000:
        kind = "tiled" if flags & 0x200 else "deep" if flags & 0x800 else "multi-part"
        raise path_error(path, f"{kind} EXR files are not supported", _FIX)
    try:
        return _read_body(path, buf)
    except (struct.error, ValueError, IndexError, zlib.error) as e:
        if isinstance(e, InputError):
            raise
        raise path_error(path, f"corrupt or truncated EXR ({e})", "write the file again") from None


def _read_body(path: Path, buf: bytes) -> dict[str, np.ndarray]:
    i = 8
    attrs: dict[str, tuple[str, bytes]] = {}
    while buf[i] != 0:
        name, i = _cstr(buf, i)
        typ, i = _cstr(buf, i)
        (size,) = struct.unpack_from("<i", buf, i)
        i += 4
        attrs[name] = (typ, buf[i : i + size])
        i += size
    i += 1
    for key in ("channels", "compression", "dataWindow"):
        if key not in attrs:
            raise path_error(path, f"EXR header has no {key}", "write the file again")
    channels: list[tuple[str, np.dtype]] = []
    raw = attrs["channels"][1]
    j = 0
    while raw[j] != 0:
        name, j = _cstr(raw, j)
        ptype, _, xs, ys = struct.unpack_from("<iB3xii", raw, j)
        j += 16
        if ptype not in _TYPES or xs != 1 or ys != 1:
            raise path_error(path, f"channel {name!r} is subsampled or of unknown type", _FIX)
        channels.append((name, _TYPES[ptype]))
    comp = attrs["compression"][1][0]
    cname, lines = COMPRESSIONS.get(comp, (f"#{comp}", None))
    if lines is None:
        raise path_error(path, f"EXR compression {cname} is not supported here", _FIX)
    x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"][1])
    w, h = x1 - x0 + 1, y1 - y0 + 1
    if w <= 0 or h <= 0:
        raise path_error(path, f"empty EXR data window {w}x{h}", "write the file again")
    n_chunks = -(-h // lines)
    offsets = struct.unpack_from(f"<{n_chunks}Q", buf, i)
    out = {name: np.zeros((h, w), dtype=dt) for name, dt in channels}
    row_bytes = sum(dt.itemsize for _, dt in channels) * w
    for off in offsets:
        y, size = struct.unpack_from("<ii", buf, off)
        data = buf[off + 8 : off + 8 + size]
        if len(data) != size:
            raise ValueError("chunk runs past the end of the file")
        r0 = y - y0
        n = min(lines, h - r0)
        if r0 < 0 or n <= 0:
            raise ValueError(f"chunk at row {y} outside the data window")
        want = row_bytes * n
        if size < want:  # stored compressed (a chunk that would not shrink is stored raw)
            if cname == "RLE":
                data = _predict_decode(_rle_decode(data, want))
            else:
                data = _predict_decode(zlib.decompress(data))
        if len(data) != want:
            raise ValueError(f"chunk at row {y} holds {len(data)} bytes, not {want}")
        pos = 0
        for r in range(r0, r0 + n):
            for name, dt in channels:
                nb = dt.itemsize * w
                out[name][r] = np.frombuffer(data, dtype=dt, count=w, offset=pos)
                pos += nb
    return {k: v.astype(v.dtype.newbyteorder("="), copy=False) for k, v in out.items()}


def _attr(name: str, typ: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + typ.encode() + b"\0" + struct.pack("<i", len(value)) + value


def write_exr(path: PathLike, channels: dict[str, np.ndarray], compression: str = "ZIP") -> None:
    """Write ``{name: [H, W] array}`` (float16 -> HALF, float32 -> FLOAT, uint32 -> UINT) as a
    single-part scanline EXR, channels in name order (as OpenEXR stores them), compressed
    ``NONE``, ``ZIPS`` or ``ZIP``."""
    codes = {v[0]: k for k, v in COMPRESSIONS.items()}
    if compression not in ("NONE", "ZIPS", "ZIP"):
        raise ValueError(f"write_exr writes NONE, ZIPS or ZIP, not {compression}")
    comp = codes[compression]
    lines = COMPRESSIONS[comp][1]
    assert lines is not None
    names = sorted(channels)
    arrays = [np.asarray(channels[n]) for n in names]
    h, w = arrays[0].shape
    ptypes = {np.dtype("float16"): 1, np.dtype("float32"): 2, np.dtype("uint32"): 0}
    chlist = b""
    for n, a in zip(names, arrays, strict=True):
        if a.shape != (h, w) or a.dtype not in ptypes:
            raise ValueError(f"channel {n}: want [H, W] float16/float32/uint32, got {a.dtype}")
        chlist += n.encode() + b"\0" + struct.pack("<iB3xii", ptypes[a.dtype], 0, 1, 1)
    chlist += b"\0"
    header = struct.pack("<ii", _MAGIC, 2)
    header += _attr("channels", "chlist", chlist)
    header += _attr("compression", "compression", bytes([comp]))
    header += _attr("dataWindow", "box2i", struct.pack("<iiii", 0, 0, w - 1, h - 1))
    header += _attr("displayWindow", "box2i", struct.pack("<iiii", 0, 0, w - 1, h - 1))
    header += _attr("lineOrder", "lineOrder", bytes([0]))
    header += _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
    header += _attr("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0))
    header += _attr("screenWindowWidth", "float", struct.pack("<f", 1.0))
    header += b"\0"
    chunks = []
    for r0 in range(0, h, lines):
        data = b"".join(
            a[r].astype(a.dtype.newbyteorder("<")).tobytes()
            for r in range(r0, min(r0 + lines, h))
            for a in arrays
        )
        if comp != 0:
            packed = zlib.compress(_predict_encode(data), 6)
            data = packed if len(packed) < len(data) else data
        chunks.append(struct.pack("<ii", r0, len(data)) + data)
    pos = len(header) + 8 * len(chunks)
    table = b""
    for c in chunks:
        table += struct.pack("<Q", pos)
        pos += len(c)
    Path(path).write_bytes(header + table + b"".join(chunks))
