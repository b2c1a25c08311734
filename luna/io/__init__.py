"""Scans on disk -> :class:`~luna.io.ct.Ct`: the HU array and its geometry, nothing more.

Reading is SimpleITK's, for every format it reads (MetaImage, NIfTI, NRRD, DICOM series); what is
ours is checking a scan before it is used, so that a broken one gets one line naming the file and
the problem (:mod:`~luna.io.metaimage` for headers, :mod:`~luna.io.dicom` for series), finding the
scans of a data dir (:mod:`~luna.io.scans`) and writing a scan in each format
(:mod:`~luna.io.writers`). Cropping is not done here (that is ``luna.data``): this package knows
scans, not samples.
"""
