"""Settings shared by the data layer, the model and the apps.

The crop geometry and the HU clip range are part of the crop cache key: change either and the
cache is rebuilt rather than silently reused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Bump when the bytes a crop holds would change for the same inputs (cropping rule, dtype...).
CACHE_FORMAT_VERSION = 2

# LUNA16 scans store Hounsfield units; air is -1000, bone tops out well under +1000.
HU_MIN = -1000
HU_MAX = 1000

# (index, row, column) = (z, y, x) size of one sample, as in the reference.
CROP_SHAPE_IRC = (32, 48, 48)

# What a crop does where it would leave the volume. "pad": stay centred on the candidate and fill
# the outside with air, so a sample always shows its own candidate at the centre. "shift": the
# reference's rule (SPEC section 3), move the crop inside the volume; a candidate a few slices
# from the end of a scan then gets the crop (and the score) of whatever lies 16 slices in.
CROP_EDGES = ("pad", "shift")
CROP_EDGE = "pad"

# Crops are cut from the scan's own voxel grid (0, the reference) or from the scan resampled to
# isotropic voxels of this many mm, so that a nodule has the same shape in voxels whatever the
# slice thickness. 0 keeps the scan's grid.
CROP_VOXEL_MM = 0.0


@dataclass(frozen=True)
class CropConfig:
    """What a cached crop depends on besides the scan and the candidate centre.

    Args:
        shape_irc: crop size in voxels, (index, row, column).
        hu_min: lower clip bound in HU.
        hu_max: upper clip bound in HU.
        edge: ``"pad"`` or ``"shift"``, see :data:`CROP_EDGE`.
        voxel_mm: isotropic voxel size the scan is resampled to before cropping; 0 (the
            reference) crops the scan's own voxels. See :data:`CROP_VOXEL_MM`.
    """

    shape_irc: tuple[int, int, int] = CROP_SHAPE_IRC
    hu_min: int = HU_MIN
    hu_max: int = HU_MAX
    edge: str = CROP_EDGE
    voxel_mm: float = CROP_VOXEL_MM

    def __post_init__(self) -> None:
        if self.edge not in CROP_EDGES:
            raise ValueError(f"crop edge must be one of {', '.join(CROP_EDGES)}, got {self.edge!r}")
        if not (self.voxel_mm == 0 or 0.1 <= self.voxel_mm <= 10):
            raise ValueError(f"crop voxel size must be 0 (the scan's own voxels) or a voxel size of 0.1-10 mm, "
                             f"got {self.voxel_mm:g}")

    def key(self) -> str:
        """A short, human-readable string that names this configuration in the cache layout."""
        i, r, c = self.shape_irc
        grid = f"-iso{self.voxel_mm:g}mm" if self.voxel_mm else ""
        return f"v{CACHE_FORMAT_VERSION}-{i}x{r}x{c}-hu{self.hu_min}_{self.hu_max}-{self.edge}{grid}"

    def as_dict(self) -> dict:
        """The fields as stored in a cache entry's marker; ``voxel_mm`` only when set, so that
        entries written before it existed (the scan's own voxels) stay valid."""
        fields = asdict(self)
        if not self.voxel_mm:
            del fields["voxel_mm"]
        return fields
