"""DICOM folders as hospitals store them (ctvlp.transforms.dicom), one table row per case.

Series are made with pydicom (``io.dicom_series_bytes``): several series in one folder, a
localizer, a dose-report object without pixels, junk files, missing slices, spacing that changes
along the scan, a gantry tilt, and PS3.15 identifying tags that must not come back out.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import generate_uid

from ctvlp.transforms import dicom, io, validate
from ctvlp.transforms.dicom import DicomRules, read_dicom_folder

AFF = np.diag([-0.9, -0.9, 2.5, 1.0])  # RAS affine of an LPS-stored axial series
PHI = {"PatientName": "Canary^Phileas", "PatientID": "PID-CANARY", "PatientBirthDate": "19450203",
       "InstitutionName": "Canary General", "AccessionNumber": "ACC-CANARY", "StudyDate": "20240229"}


def ramp(shape=(20, 18, 24)) -> np.ndarray:
    """HU linear in every index: linear interpolation along z reproduces it exactly."""
    x, y, z = np.indices(shape)
    return (-900 + 3 * x + 2 * y + 40 * z).astype(np.int16)


def series(img=None, aff=AFF, **tags) -> list[bytes]:
    return io.dicom_series_bytes(ramp() if img is None else img, aff,
                                 tags={"SeriesInstanceUID": generate_uid(), **PHI, **tags})


def localizer() -> list[bytes]:
    coronal = np.array([[0.9, 0, 0, 0], [0, 0, 1, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    return series(ramp((20, 30, 1)), coronal, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])


def dose_report() -> bytes:
    import io as _io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray dose SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientName = "SR", PHI["PatientName"]
    buf = _io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def thin() -> list[bytes]:  # 1.25 mm, covers half the z range: fewer slices, thinner
    aff = np.diag([-0.9, -0.9, 1.25, 1.0])
    return series(ramp((20, 18, 12)), aff)


def drop(files, ks):
    return [f for k, f in enumerate(files) if k not in ks]


def variable_spacing() -> list[bytes]:
    """Slices 0..11 every 2.5 mm, then 12..23 every 1.25 mm (positions re-written)."""
    import io as _io

    import pydicom

    out = []
    for k, blob in enumerate(series()):
        ds = pydicom.dcmread(_io.BytesIO(blob))
        z = 2.5 * k if k < 12 else 2.5 * 11 + 1.25 * (k - 11)
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [z]
        buf = _io.BytesIO()
        ds.save_as(buf)
        out.append(buf.getvalue())
    return out


# case -> (files, rules, expected: reason code, or (slices, series picked by its slice spacing))
CASES = {
    "one series": (lambda: series(), {}, (24, 2.5)),
    "two series, thinnest": (lambda: series() + thin(), {}, (12, 1.25)),
    "two series, most_slices": (lambda: series() + thin(), {"series": "most_slices"}, (24, 2.5)),
    "two series, only": (lambda: series() + thin(), {"series": "only"}, "dicom_series"),
    "localizer and dose report skipped": (lambda: series() + localizer() + [dose_report()], {}, (24, 2.5)),
    "localizer only": (lambda: localizer(), {}, "dicom_series"),
    "junk file skipped": (lambda: series() + [b"DICOMDIR? no: junk"], {}, (24, 2.5)),
    "MR only": (lambda: io.dicom_series_bytes(ramp(), AFF, modality="MR"), {}, "not_ct"),
    "one missing slice interpolated": (lambda: drop(series(), {7}), {}, (24, 2.5)),
    "three missing slices": (lambda: drop(series(), {7, 8, 9}), {}, "missing_slices"),
    "missing slice, max_gap_factor 1": (lambda: drop(series(), {7}), {"max_gap_factor": 1.0}, "missing_slices"),
    "variable spacing resampled": (variable_spacing, {}, (None, None)),  # 2.5 mm then 1.25 mm
    "duplicate slice": (lambda: (lambda f: f + f[3:4])(series()), {}, "bad_spacing"),
    "a single image": (lambda: series()[:1], {}, "dicom_series"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dicom_case_table(case):
    make, rules, expected = CASES[case]
    if isinstance(expected, str):
        with pytest.raises(validate.VolumeError) as err:
            read_dicom_folder(make(), DicomRules(**rules))
        assert err.value.kind == expected
        assert not any(v.lower() in str(err.value).lower() for v in PHI.values())
        return
    arr, aff, info = read_dicom_folder(make(), DicomRules(**rules))
    slices, gap = expected
    if slices is not None:
        assert arr.shape[2] == slices and info["zooms"][2] == pytest.approx(gap, abs=1e-4)
    truth = ramp(arr.shape) if slices == 24 or slices is None else ramp((20, 18, 12))
    if slices is None:  # uniform at the median gap (2.5 mm): offsets 0, 2.5, ..., 41.25 mm
        z_mm = np.arange(arr.shape[2]) * info["zooms"][2]
        truth = (-900 + 3 * np.indices(arr.shape)[0] + 2 * np.indices(arr.shape)[1]
                 + 40 * np.interp(z_mm, [0, 27.5, 42.5], [0, 11, 23])[None, None, :])
    np.testing.assert_allclose(arr, truth, atol=1e-3)
    assert not any(v.lower() in str(info).lower() for v in PHI.values())


def test_localizer_and_other_objects_are_counted():
    _, _, info = read_dicom_folder(series() + localizer() + [dose_report(), b"junk"] + thin())
    d = info["dicom"]
    assert (d["num_localizers"], d["num_not_image"], d["num_unparsed"], d["num_series"]) == (1, 1, 1, 2)
    assert d["gantry_tilt_deg"] == 0 and not d["interpolated"]


def _tilted(deg: float) -> np.ndarray:
    """A gantry tilted ``deg`` about x: rows along x, columns tilted in y-z, slices stacked along z."""
    t = np.radians(deg)
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = (-0.9, 0, 0), (0, -0.9 * np.cos(t), 0.9 * np.sin(t)), (0, 0, 2.5)
    return aff


@pytest.mark.parametrize("deg", [10.0, 25.0])
def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid_keeping_world_positions(deg):
    img = np.full((20, 30, 24), -1000, np.int16)
    img[9:12, 24:27, 10:13] = 1000  # a bright cube far from the tilt axis (row 25: 5-10 mm of shear)
    aff = _tilted(deg)
    arr, out_aff, info = read_dicom_folder(series(img, aff))
    assert info["dicom"]["gantry_tilt_deg"] == pytest.approx(deg, abs=0.05)
    assert validate.obliquity_deg(out_aff) < 0.01  # orthogonal and axis-aligned
    world = lambda a, ijk: (a @ np.append(ijk, 1))[:3]  # noqa: E731
    truth = world(aff, [10, 25, 11])
    w = np.clip(arr.astype(np.float64) + 1000, 0, None)
    centre = (np.indices(arr.shape).reshape(3, -1) * w.ravel()).sum(1) / w.sum()
    assert np.linalg.norm(world(out_aff, centre) - truth) < 0.5  # mm
    naive = world(np.diag([-0.9, -0.9 * np.cos(np.radians(deg)), 2.5, 1.0]) @ np.eye(4), [10, 25, 11])
    assert np.linalg.norm(naive - truth) > 3  # what ignoring the shear would cost
    with pytest.raises(validate.VolumeError) as err:
        read_dicom_folder(series(img, aff), DicomRules(gantry_tilt="quarantine"))
    assert err.value.kind == "gantry_tilt"


def test_rules_come_from_the_spec():
    from ctvlp.config import load_spec

    spec = load_spec(None, ["ingest.dicom.series=only", "ingest.dicom.gantry_tilt=quarantine"])
    assert DicomRules.from_spec(spec.ingest.dicom) == DicomRules(series="only", gantry_tilt="quarantine")
    assert dicom.TAGS_READ and "PatientName" not in dicom.TAGS_READ
