"""What one classification sample is: the HU window and the crop shape (docs/luna16.md, "A sample").

These are the reference's choices and part of every crop cache key and checkpoint: the network
sees raw HU clipped to this window, in a crop of this many voxels centred on the candidate.
"""
from __future__ import annotations

# LUNA16 scans store Hounsfield units; air is -1000, bone tops out well under +1000.
HU_MIN = -1000
HU_MAX = 1000

# (index, row, column) = (z, y, x) size of one sample, as in the reference.
CROP_SHAPE_IRC = (32, 48, 48)
