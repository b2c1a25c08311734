"""Settings shared by the data layer, the model and the apps.

The crop geometry and the HU clip range are part of the crop cache key: change either and the
cache is rebuilt rather than silently reused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Bump when the bytes a crop holds would change for the same inputs (cropping rule, dtype...).
CACHE_FORMAT_VERSION = 1

# LUNA16 scans store Hounsfield units; air is -1000, bone tops out well under +1000.
HU_MIN = -1000
HU_MAX = 1000

# (index, row, column) = (z, y, x) size of one sample, as in the reference.
CROP_SHAPE_IRC = (32, 48, 48)


@dataclass(frozen=True)
class CropConfig:
    """What a cached crop depends on besides the scan and the candidate centre.

    Args:
        shape_irc: crop size in voxels, (index, row, column).
        hu_min: lower clip bound in HU.
        hu_max: upper clip bound in HU.
    """

    shape_irc: tuple[int, int, int] = CROP_SHAPE_IRC
    hu_min: int = HU_MIN
    hu_max: int = HU_MAX

    def key(self) -> str:
        """A short, human-readable string that names this configuration in the cache layout."""
        i, r, c = self.shape_irc
        return f"v{CACHE_FORMAT_VERSION}-{i}x{r}x{c}-hu{self.hu_min}_{self.hu_max}"

    def as_dict(self) -> dict:
        return asdict(self)
