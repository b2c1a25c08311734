"""luna: find lung nodules among LUNA16 candidates with a 3D CNN.

The public API keeps the reference's names (PEP 8 for functions). Names are imported lazily so
that ``luna --help`` and the data tools do not pay for importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "XyzTuple": "luna.geometry", "IrcTuple": "luna.geometry",
    "xyz2irc": "luna.geometry", "irc2xyz": "luna.geometry",
    "CandidateInfo": "luna.candidates", "get_candidate_info_list": "luna.candidates",
    "Ct": "luna.ct", "CropCache": "luna.cache", "CropConfig": "luna.config",
    "LunaDataset": "luna.dataset", "LunaModel": "luna.model",
    "DataError": "luna.errors", "UsageError": "luna.errors", "LunaError": "luna.errors",
    "run": "luna.app",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'luna' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
