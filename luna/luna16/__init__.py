"""The LUNA16 task's facts, with no torch: world/voxel geometry, what a sample is, the CSV files,
candidates and splits, the scoring rules, and the names of files on disk.

Everything above this package builds on these; nothing here imports anything of luna but the
leaf modules (``luna.errors``, ``luna.atomic``). The rules are written out in ``docs/luna16.md``.
"""
