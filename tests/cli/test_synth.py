"""``luna synth``: flags, the layout it writes, and one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from luna.cli.common import run_app
from luna.cli.synth import LunaSynthApp, get_args_parser


def test_help_lists_every_flag_with_its_default():
    text = get_args_parser().format_help()
    for flag in ("--out", "--series", "--seed", "--size", "--force", "--workers", "--debug", "--acquisition"):
        assert flag in text
    assert "(default: 32)" in text and "(default: small)" in text
    assert "default (today's scans, same files" in text   # the help names its default itself


def test_python_m_help_works():
    done = subprocess.run([sys.executable, "-m", "luna", "synth", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--out" in done.stdout


def test_defaults_are_the_small_32_series_set(tmp_path):
    args = LunaSynthApp(["--out", str(tmp_path / "d")]).args
    assert (args.series, args.seed, args.size, args.force) == (32, 0, "small", False)


def test_app_writes_the_luna16_layout(tmp_path):
    out = tmp_path / "synth"
    LunaSynthApp(["--out", str(out), "--size", "tiny", "--series", "3", "--seed", "7"]).main()
    assert sorted(p.name for p in out.glob("subset*")) == [f"subset{k}" for k in range(10)]
    assert len(list(out.glob("subset*/*.mhd"))) == 3 and len(list(out.glob("subset*/*.raw"))) == 3
    lines = (out / "candidates.csv").read_text().splitlines()
    assert lines[0] == "seriesuid,coordX,coordY,coordZ,class" and len(lines) > 10
    assert (out / "annotations.csv").read_text().startswith("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    assert (out / "annotations_excluded.csv").exists()
    assert not (out / "acquisition.csv").exists()   # only the other acquisitions write one


def test_non_empty_out_without_force_is_a_one_line_usage_error(tmp_path, capsys):
    out = tmp_path / "synth"
    assert run_app(LunaSynthApp, ["--out", str(out), "--size", "tiny", "--series", "1"]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    argv = ["--out", str(out), "--size", "tiny", "--series", "2"]
    assert run_app(LunaSynthApp, argv, prog="luna synth") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and str(out) in err[0]
    assert sorted(p.name for p in out.rglob("*")) == before
    assert run_app(LunaSynthApp, ["--out", str(out), "--size", "tiny", "--series", "2", "--force"]) == 0
    assert len(list(out.glob("subset*/*.mhd"))) == 2


@pytest.mark.parametrize("bad", [["--series", "0"], ["--size", "huge"], ["--seed", "-1"], [],
                                 ["--acquisition", "cheap"]])
def test_bad_flags_exit_with_status_2(tmp_path, bad):
    argv = bad if bad == [] else ["--out", str(tmp_path / "d"), *bad]
    with pytest.raises(SystemExit) as exc:
        LunaSynthApp(argv)
    assert exc.value.code == 2


def test_inverted_nodule_range_is_a_usage_error(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "d"), "--size", "tiny", "--nodules-per-scan", "3", "1"]
    assert run_app(LunaSynthApp, argv) == 2
    assert "nodules per scan" in capsys.readouterr().err
    assert not Path(tmp_path / "d").exists()


def test_format_flag_writes_each_layout_with_the_same_csvs(tmp_path):
    outs = {fmt: tmp_path / fmt for fmt in ("mhd", "nifti", "dicom")}
    for fmt, out in outs.items():
        assert run_app(LunaSynthApp, ["--out", str(out), "--size", "tiny", "--series", "2", "--format", fmt]) == 0
    for name in ("candidates.csv", "annotations.csv", "annotations_excluded.csv"):
        assert len({(out / name).read_bytes() for out in outs.values()}) == 1
    assert len(list(outs["nifti"].glob("subset*/*.nii.gz"))) == 2 and not list(outs["nifti"].rglob("*.mhd"))
    folders = [p for p in outs["dicom"].glob("subset*/*") if p.is_dir()]
    assert len(folders) == 2 and all(len(list(p.glob("*.dcm"))) >= 30 for p in folders)
    assert "--format" in get_args_parser().format_help() and "(default: mhd)" in get_args_parser().format_help()


def test_acquisition_flag_writes_a_table_of_each_scans_settings(tmp_path):
    out = tmp_path / "shifted"
    argv = ["--out", str(out), "--size", "tiny", "--series", "2", "--seed", "5", "--acquisition", "shifted"]
    assert run_app(LunaSynthApp, argv) == 0
    header, *rows = (out / "acquisition.csv").read_text().splitlines()
    assert header == ("seriesuid,acquisition,spacing_z_mm,slice_thickness_mm,pixel_mm,noise_factor,kernel_sigma_px,"
                      "hu_offset,vessel_length_factor,fork_angle_factor,vessel_edge_factor,tortuosity,texture_factor")
    uids = sorted(p.stem for p in out.glob("subset*/*.mhd"))
    assert sorted(row.split(",")[0] for row in rows) == uids and len(uids) == 2
    for row in rows:
        _, mode, spacing, thickness, *_ = row.split(",")
        assert mode == "shifted" and 2.5 <= float(spacing) <= 3.0 and float(thickness) > float(spacing)
