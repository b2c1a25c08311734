"""MetaImage (``.mhd`` + ``.raw``) headers, checked by hand before SimpleITK reads the scan.

SimpleITK's own errors for a missing or truncated ``.raw`` are long and name the wrong thing,
and a damaged compressed stream (``.zraw``) it reads as garbage without any error; these checks
name the file and the field instead. The data may also follow the header in the
same file (``ElementDataFile = LOCAL``, what ``.mha`` files and some tools' ``.mhd`` files hold),
so only the lines up to ``ElementDataFile`` are taken as text.
"""
from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path

import numpy as np

from luna.errors import DataError

log = logging.getLogger(__name__)

# Bytes per voxel of the MetaImage element types a CT can sensibly use.
_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                  "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8}


# The keys MetaIO takes a scan's geometry from, each with the names it also reads, and how many
# numbers each holds in 3-D.
_ORIGIN_KEYS = ("Offset", "Origin", "Position")
_SPACING_KEYS = ("ElementSpacing", "ElementSize")
_DIRECTION_KEYS = ("TransformMatrix", "Rotation", "Orientation")
_GEOMETRY_KEYS = {**dict.fromkeys(_ORIGIN_KEYS, 3), **dict.fromkeys(_SPACING_KEYS, 3),
                  **dict.fromkeys(_DIRECTION_KEYS, 9)}


# A header is a few hundred bytes; one that runs past this is no MetaImage header.
_MAX_HEADER_BYTES = 65536


def _header_bytes(mhd_path: Path) -> bytes:
    """The header's bytes: every line up to and including ``ElementDataFile``, the last key of a
    MetaImage header, after which inline (``LOCAL``) data may follow. Never reads that data."""
    with open(mhd_path, "rb") as handle:
        head = handle.read(_MAX_HEADER_BYTES)
    key = head.find(b"ElementDataFile")
    if key >= 0:
        end = head.find(b"\n", key)
        head = head[:end + 1] if end >= 0 else head
    return head


def _parse(text: str) -> dict[str, str]:
    header: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
    return header


def _named_data_file(mhd_path: Path, header: dict[str, str]) -> Path | None:
    """The one separate file a parsed header's ``ElementDataFile`` names, or None for voxels in
    the header's own file (``LOCAL``) or spread over several (``LIST``, a ``%`` pattern)."""
    name = header.get("ElementDataFile", "")
    if not name or name == "LOCAL" or name.split()[0] == "LIST" or "%" in name:
        return None
    return Path(mhd_path).parent / name


def data_file(mhd_path: Path) -> Path | None:
    """The separate file a ``.mhd`` header's voxels are in (see :func:`_named_data_file`), or
    None, also when the header cannot be read. For stamping a cache entry: never raises."""
    try:
        header = _parse(_header_bytes(Path(mhd_path)).decode("ascii"))
    except (OSError, UnicodeDecodeError):
        return None
    return _named_data_file(mhd_path, header)


def read_mhd_header(mhd_path: Path) -> dict[str, str]:
    """Parse a MetaImage header into {key: value} and check it describes a readable 3-D scan.

    Raises:
        DataError: unreadable header, not 3-D, unknown element type, bad DimSize, an origin,
            spacing or direction that is not numbers, or voxel data (a separate file or inline
            after the header) that is missing, shorter than the header promises or, when
            compressed, a damaged stream.
    """
    mhd_path = Path(mhd_path)
    try:
        head = _header_bytes(mhd_path)
        text = head.decode("ascii", errors="strict")
    except FileNotFoundError:
        raise DataError(f"scan header {mhd_path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{mhd_path}: not a MetaImage text header") from None
    header = _parse(text)
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise DataError(f"{mhd_path}: malformed header, no {key} line")
    if header["NDims"] != "3":
        raise DataError(f"{mhd_path}: image is {header['NDims']}-D (NDims = {header['NDims']}); a CT scan must be 3-D")
    try:
        dims = [int(v) for v in header["DimSize"].split()]
    except ValueError:
        raise DataError(f"{mhd_path}: DimSize is not three integers: {header['DimSize']!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise DataError(f"{mhd_path}: DimSize must be three positive integers, got {header['DimSize']!r}")
    element_type = header["ElementType"]
    if element_type not in _ELEMENT_BYTES:
        raise DataError(f"{mhd_path}: unsupported ElementType {element_type!r}")
    _check_geometry(mhd_path, header)
    expected = int(np.prod(dims)) * _ELEMENT_BYTES[element_type]
    shape = f"{'x'.join(map(str, dims))} {element_type}"
    if header["ElementDataFile"] == "LOCAL":
        data_path, start = mhd_path, len(head)
    else:
        data_path, start = _named_data_file(mhd_path, header), 0
        if data_path is not None and not data_path.is_file():
            raise DataError(f"{mhd_path}: its data file {data_path.name} is missing")
    if data_path is None:
        return header  # voxels spread over several files (LIST, a % pattern): not checked
    if header.get("CompressedData", "False").lower() == "true":
        _check_compressed(data_path, start, header, expected, shape)
        return header
    skip = _skipped_bytes(mhd_path, header) if data_path != mhd_path else 0
    actual = data_path.stat().st_size - start - skip
    if actual < expected:
        if data_path == mhd_path:
            raise DataError(f"{mhd_path}: truncated, {max(actual, 0)} bytes of voxels after the header but it "
                            f"needs {expected} ({shape})")
        after = f" after the {skip} bytes HeaderSize skips" if skip else ""
        raise DataError(f"{data_path}: truncated, {max(actual, 0)} bytes{after} but the header needs {expected} "
                        f"({shape})")
    return header


def _skipped_bytes(mhd_path: Path, header: dict[str, str]) -> int:
    """How many bytes at the start of the data file ``HeaderSize`` says to skip (another format's
    header, as some tools leave in front of the voxels); 0 when none, or -1 (voxels at the end)."""
    text = header.get("HeaderSize", "0")
    try:
        skip = int(text)
    except ValueError:
        raise DataError(f"{mhd_path}: HeaderSize is not a whole number: {text!r}") from None
    return max(skip, 0)


def _check_geometry(mhd_path: Path, header: dict[str, str]) -> None:
    """Check the origin, spacing and direction lines, and warn when spacing or origin is missing.

    SimpleITK reads a word in them as 0 and a short list as what is there, padded with 0s: the
    scan would then lie elsewhere in the world and every candidate be cropped at the wrong place,
    or called outside the scan with no hint why. Without the lines it takes 1 mm voxels and an
    origin at 0, valid MetaImage but seldom what a CT meant, so that is said.

    Raises:
        DataError: a geometry line that is not the right count of finite numbers.
    """
    for key, count in _GEOMETRY_KEYS.items():
        if key not in header:
            continue
        try:
            numbers = [float(v) for v in header[key].split()]
        except ValueError:
            numbers = []
        if len(numbers) != count or not all(map(math.isfinite, numbers)):
            raise DataError(f"{mhd_path}: {key} is not {count} numbers: {header[key]!r}")
    missing = [keys[0] for keys in (_SPACING_KEYS, _ORIGIN_KEYS) if not any(key in header for key in keys)]
    if missing:
        log.warning("%s: no %s line; it is read as %s, and a candidate's millimetres may then land on the wrong "
                    "voxel", mhd_path, " and no ".join(missing),
                    " and ".join({"ElementSpacing": "1 mm voxels", "Offset": "an origin at 0"}[key] for key in missing))


# Compressed voxels are inflated in pieces of this many bytes, so checking them takes little memory.
_INFLATE_CHUNK = 1 << 20
# What MetaIO's inflateInit2(47) accepts: a zlib or a gzip stream.
_ZLIB_OR_GZIP = zlib.MAX_WBITS | 32


def _check_compressed(data_path: Path, start: int, header: dict[str, str], expected: int, shape: str) -> None:
    """Check that compressed voxels (``CompressedData = True``) inflate to the whole volume.

    SimpleITK does not fail on a damaged stream: it prints "Uncompress failed" and returns a
    volume of garbage, and without a ``CompressedDataSize`` line it takes a truncated file for
    a whole one. So the stream is inflated here, once, and its output counted (not kept): about
    as long as SimpleITK's own read of it, and nothing else tells a broken ``.zraw``.

    Raises:
        DataError: naming the file, for a stream that is corrupt, ends early or inflates to
            fewer bytes than the header's DimSize and ElementType need.
    """
    size_text = header.get("CompressedDataSize", "")
    limit = int(size_text) if size_text.isdigit() and int(size_text) > 0 else None
    inflater = zlib.decompressobj(_ZLIB_OR_GZIP)
    inflated = read = 0
    try:
        with open(data_path, "rb") as handle:
            handle.seek(start)
            while not inflater.eof and (limit is None or read < limit):
                chunk = handle.read(_INFLATE_CHUNK if limit is None else min(_INFLATE_CHUNK, limit - read))
                if not chunk:
                    break
                read += len(chunk)
                while chunk and not inflater.eof:
                    inflated += len(inflater.decompress(chunk, _INFLATE_CHUNK))
                    chunk = inflater.unconsumed_tail
    except zlib.error as exc:
        raise DataError(f"{data_path}: compressed voxels are corrupt ({exc}); the header needs {expected} bytes "
                        f"({shape})") from None
    if not inflater.eof:
        raise DataError(f"{data_path}: compressed voxels end early, the {read} bytes there inflate to {inflated} "
                        f"of the {expected} the header needs ({shape}); is the file cut short?")
    if inflated < expected:
        raise DataError(f"{data_path}: compressed voxels decompress to {inflated} bytes but the header needs "
                        f"{expected} ({shape})")
