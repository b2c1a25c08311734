"""Tests for luna.errors: one line out of a C++ library's exception text."""
import pytest

from luna.errors import library_reason

NRRD = ("Exception thrown in SimpleITK ImageFileReader_Execute: /b/ITK/Modules/IO/NRRD/src/itkNrrdImageIO.cxx:410:\n"
        "itk::ERROR: NrrdImageIO(0x5647b9bb82b0): ReadImageInformation: Error reading /d/s.nrrd:\n"
        "[nrrd] nrrdLoad: trouble reading \"/d/s.nrrd\"\n"
        "[nrrd] _nrrdHeaderCheck: type (short) and encoding (raw) require endian info\n")
NIFTI = ("Exception thrown in SimpleITK ImageFileReader_Execute: /b/itkNiftiImageIO.cxx:1070:\n"
         "ITK ERROR: NiftiImageIO(0x5647ba526cb0): /d/g.nii.gz is not recognized as a NIFTI file")
NO_IO = ("Exception thrown in SimpleITK ImageFileReader_Execute: /b/sitkImageReaderBase.cxx:99:\n"
         "sitk::ERROR: Unable to determine ImageIO reader for \"/d/x.MHD\"")


@pytest.mark.parametrize("text,reason", [
    (NRRD, "ReadImageInformation: Error reading /d/s.nrrd: [nrrd] _nrrdHeaderCheck: type (short) and encoding "
           "(raw) require endian info"),
    (NIFTI, "/d/g.nii.gz is not recognized as a NIFTI file"),
    (NO_IO, "Unable to determine ImageIO reader for \"/d/x.MHD\""),
    ("plain message\nsecond line", "plain message"),
    ("", "unreadable"),
])
def test_the_reason_is_kept_and_where_it_was_thrown_is_not(text, reason):
    assert library_reason(RuntimeError(text)) == reason
