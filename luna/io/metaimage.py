"""MetaImage (``.mhd`` + ``.raw``) headers, checked by hand before SimpleITK reads the scan.

SimpleITK's own errors for a missing or truncated ``.raw`` are long and name the wrong thing;
these checks name the file and the field instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from luna.errors import DataError

# Bytes per voxel of the MetaImage element types a CT can sensibly use.
_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                  "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8}


def read_mhd_header(mhd_path: Path) -> dict[str, str]:
    """Parse a MetaImage header into {key: value} and check it describes a readable 3-D scan.

    Raises:
        DataError: unreadable header, not 3-D, unknown element type, bad DimSize, or a data file
            that is missing or shorter than the header promises.
    """
    mhd_path = Path(mhd_path)
    try:
        text = mhd_path.read_bytes()[:65536].decode("ascii", errors="strict")
    except FileNotFoundError:
        raise DataError(f"scan header {mhd_path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{mhd_path}: not a MetaImage text header") from None
    header: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break  # inline data may follow
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
    compressed = header.get("CompressedData", "False").lower() == "true"
    data_file = header["ElementDataFile"]
    if data_file not in ("LOCAL", "LIST") and "%" not in data_file and not compressed:
        raw_path = mhd_path.parent / data_file
        if not raw_path.is_file():
            raise DataError(f"{mhd_path}: its data file {raw_path.name} is missing")
        expected = int(np.prod(dims)) * _ELEMENT_BYTES[element_type]
        actual = raw_path.stat().st_size
        if actual < expected:
            raise DataError(f"{raw_path}: truncated, {actual} bytes but the header needs {expected} "
                            f"({'x'.join(map(str, dims))} {element_type})")
    return header


