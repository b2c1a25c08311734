"""The synthetic chest-CT generator behind ``luna synth``: scans and CSVs in the exact LUNA16 layout.

    from luna.synth import make_dataset, generate_scan
    summary = make_dataset(tmp_path / "luna", n_series=3, size="tiny")
    scan = generate_scan(seed=0, index=0, size="tiny")   # in memory, nothing written
    make_dataset(tmp_path / "v", acquisition="varied")   # each scan its own slices, pixel, kernel

See :mod:`luna.synth.phantom` for what the scans hold.
"""
from luna.synth.acquisition import ACQUISITIONS, PRESETS, SHIFTED, VARIED, Acquisition, ScanAcquisition
from luna.synth.findings import NEGATIVE_MIX, NODULE_KINDS
from luna.synth.phantom import (SIZES, Candidate, Finding, SynthScan, SynthSummary, check_out_dir, generate_scan,
                                make_dataset, write_scan)

__all__ = ["ACQUISITIONS", "NEGATIVE_MIX", "NODULE_KINDS", "PRESETS", "SHIFTED", "SIZES", "VARIED", "Acquisition",
           "Candidate", "Finding", "ScanAcquisition", "SynthScan", "SynthSummary", "check_out_dir", "generate_scan",
           "make_dataset", "write_scan"]
