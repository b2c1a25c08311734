"""luna: find lung nodules among LUNA16 candidates with a 3D CNN.

The public API keeps the reference's names (PEP 8 for functions). Names are imported lazily so
that ``luna --help`` and the data tools do not pay for importing torch. The package's layers are
its sub-packages (see the README, "How the code is laid out").
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "XyzTuple": "luna.luna16.geometry", "IrcTuple": "luna.luna16.geometry",
    "xyz2irc": "luna.luna16.geometry", "irc2xyz": "luna.luna16.geometry",
    "CandidateInfo": "luna.luna16.candidates", "get_candidate_info_list": "luna.data.candidates",
    "Ct": "luna.io.ct", "CropCache": "luna.data.cache", "CropConfig": "luna.data.crops",
    "LunaDataset": "luna.data.dataset", "LunaModel": "luna.models.classifier",
    "DataError": "luna.errors", "UsageError": "luna.errors", "LunaError": "luna.errors",
    # The notebook helper is the command line's entry point; named here, not imported.
    "run": "luna.cli",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'luna' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
