"""Scans on disk -> :class:`~luna.io.ct.Ct`: the HU array and its geometry, nothing more.

Reading is SimpleITK's; what is ours is checking a file before SimpleITK sees it, so that a
broken scan gets one line naming the file and the problem. Cropping is not done here (that is
``luna.data``): this package knows scans, not samples.
"""
