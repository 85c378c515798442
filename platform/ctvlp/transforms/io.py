"""Volume I/O: NIfTI (nibabel) from bytes or a path, DICOM CT (``ctvlp.transforms.dicom``), writers.

Readers return the stored voxel grid ``[X, Y, Z]`` (NIfTI axis order; DICOM: column, row, slice)
with a ``[4, 4]`` voxel -> RAS+ world affine in mm; :func:`ctvlp.transforms.array.to_canonical`
makes (D, H, W) from it. Bad input raises :class:`~ctvlp.transforms.validate.VolumeError`.

Ray Data's ``read_binary_files`` infers compression from the file extension and hands back
``.nii.gz`` objects already gunzipped, so :func:`read_nifti` decides by magic bytes, not by name.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ctvlp.transforms.array import apply_rescale
from ctvlp.transforms.dicom import read_dicom_folder, read_dicom_series  # noqa: F401 - re-exported
from ctvlp.transforms.validate import VolumeError, ensure_3d

PathOrBytes = bytes | bytearray | memoryview | str | Path
_GZIP_MAGIC = b"\x1f\x8b"

try:  # ISA-L's inflate: the same stream, ~1.7x faster than zlib on CT (bench/results/transforms.json)
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is in requirements.txt; stdlib zlib is the fallback
    _zlib = zlib
_ZLIB_ERRORS = (zlib.error, _zlib.error)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM world is LPS+, NIfTI's is RAS+


def _as_bytes(data: PathOrBytes) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, Path)):
        return Path(data).read_bytes()
    raise TypeError(f"expected bytes or a path, got {type(data).__name__}")


def gunzip_if_needed(raw: bytes) -> bytes:
    """Decompress ``raw`` when it starts with the gzip magic ``1f 8b``; pass it through otherwise.

    Raises:
        VolumeError(truncated): the gzip stream ends early; VolumeError(unreadable): corrupt stream.
    """
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return _gunzip(raw)
    except EOFError as exc:
        raise VolumeError("truncated", f"gzip stream ends early ({len(raw)} bytes)") from exc
    except (OSError, ValueError, *_ZLIB_ERRORS) as exc:
        raise VolumeError("unreadable", f"corrupt gzip stream: {exc}") from exc


def _gunzip(raw: bytes) -> bytes:
    """Every member of a gzip stream, inflated in one call each (``decompressobj``): on a mask
    (mostly zeros, ~60x compressed) this takes half the CPU time of ``igzip.decompress``, whose
    reader loops over small output chunks (bench/results/ingest.md). Raises ``EOFError`` when a
    member ends early."""
    parts = []
    while raw:
        member = _zlib.decompressobj(31)  # 16 + 15: gzip header and trailer, 32 KiB window
        parts.append(member.decompress(raw))
        if not member.eof:
            raise EOFError("gzip member ends early")
        raw = member.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_nifti(data: PathOrBytes) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Decode a NIfTI-1/2 volume, gzipped or not, from bytes or a local path.

    ``scl_slope``/``scl_inter`` are applied (the stored dtype is kept when they are identity, int16
    when they are integral and the values fit, else float32: never nibabel's float64).

    Returns:
        ``(array_xyz, affine, info)``: ``[X, Y, Z]`` voxels; ``[4, 4]`` float64 voxel -> RAS mm
        (nibabel's best affine: sform, else qform); ``info`` with ``zooms``, ``raw_pixdim`` (the
        header's pixdim[1:4] before nibabel replaces zero or negative values), ``axcodes``,
        ``stored_dtype``, ``slope``, ``inter`` and ``format`` ("nifti1"/"nifti2").

    Raises:
        VolumeError: ``truncated`` / ``unreadable`` / ``not_3d``.
    """
    raw = gunzip_if_needed(_as_bytes(data))
    if len(raw) < 4:
        raise VolumeError("unreadable", f"{len(raw)} bytes is too short for a NIfTI header")
    sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    if 348 in sizeof_hdr:
        klass, fmt = nib.Nifti1Image, "nifti1"
    elif 540 in sizeof_hdr:
        klass, fmt = nib.Nifti2Image, "nifti2"
    else:
        raise VolumeError("unreadable", "not a NIfTI-1/2 file (bad sizeof_hdr)")
    try:
        img = klass.from_bytes(raw)
        stored = _voxels(raw, img)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for short or bad data
        kind = "truncated" if "bytes" in str(exc) or isinstance(exc, EOFError) else "unreadable"
        raise VolumeError(kind, f"cannot decode NIfTI voxels: {exc}") from exc
    slope, inter = img.dataobj.slope, img.dataobj.inter  # nibabel maps unset (0/NaN) to 1/0
    # nibabel silently turns zero or negative pixdim into 1 or |pixdim| on read: keep the raw values
    # so that ingest can quarantine such a header (bad_spacing) instead of using a made-up spacing.
    order = "<" if int.from_bytes(raw[:4], "little") in (348, 540) else ">"
    offset, dtype = (76, "f4") if fmt == "nifti1" else (104, "f8")
    raw_pixdim = np.frombuffer(raw, dtype=order + dtype, count=4, offset=offset)[1:4]
    array = ensure_3d(apply_rescale(stored, float(slope), float(inter)))
    info = {
        "format": fmt,
        "zooms": [float(z) for z in img.header.get_zooms()[:3]],
        "raw_pixdim": [float(z) for z in raw_pixdim],
        "axcodes": "".join(nib.aff2axcodes(img.affine)),
        "stored_dtype": str(stored.dtype),
        "slope": float(slope),
        "inter": float(inter),
    }
    return array, np.asarray(img.affine, dtype=np.float64), info


def _voxels(raw: bytes, img: Any) -> np.ndarray:
    """The stored voxels as a read-only view of ``raw`` (no copy: at 512 x 512 x 300 int16 the
    copy nibabel makes costs ~0.14 s per volume, a fifth of the read), in the stored dtype made
    native-endian. Falls back to nibabel's reader for layouts the view does not cover."""
    proxy = img.dataobj
    dtype, shape, offset = np.dtype(proxy.dtype), tuple(int(n) for n in proxy.shape), int(proxy.offset)
    if getattr(proxy, "order", "F") != "F" or offset + dtype.itemsize * math.prod(shape) > len(raw):
        return np.asarray(proxy.get_unscaled())  # nibabel raises the precise error for short data
    view = np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order="F")
    return view if dtype.isnative else view.astype(dtype.newbyteorder("="))


def nifti_bytes(array_xyz: np.ndarray, affine: np.ndarray, compress: bool = True) -> bytes:
    """Encode ``array_xyz`` with ``affine`` as a NIfTI-1 file (gzipped when ``compress``)."""
    img = nib.Nifti1Image(np.asarray(array_xyz), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if compress else raw


def dicom_series_bytes(
    array_xyz: np.ndarray,
    affine: np.ndarray,
    modality: str = "CT",
    rescale_intercept: float = -1024.0,
    tags: dict[str, Any] | None = None,
) -> list[bytes]:
    """Encode an int16 HU volume as a DICOM series, one Part-10 file per slice (tests, exports).

    The inverse of :func:`read_dicom_series`: slice ``k`` is ``array_xyz[:, :, k]`` stored as
    ``HU - rescale_intercept`` (int16) at ``IPP = origin + k * affine[:3, 2]`` (in LPS).

    Args:
        array_xyz: ``[X, Y, Z]`` integer HU voxels.
        affine: ``[4, 4]`` RAS affine without shear; its third column should point along
            ``row_cosine x column_cosine`` so that reading keeps the slice order.
        modality: the Modality tag to write (a non-CT value is useful to test rejection).
        tags: more tags by keyword, set on every file (tests: SeriesInstanceUID, ImageType, PHI).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if array_xyz.ndim != 3 or not np.issubdtype(array_xyz.dtype, np.integer):
        raise ValueError(f"expected an integer [X, Y, Z] volume, got {array_xyz.dtype} {array_xyz.shape}")
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)  # the flip is its own inverse
    col_spacing, row_spacing = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = np.concatenate([lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing])
    series_uid, study_uid = generate_uid(), generate_uid()
    stored = (array_xyz.astype(np.int32) - int(rescale_intercept)).astype(np.int16)
    out = []
    for k in range(array_xyz.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.InstanceNumber = modality, k + 1
        ds.Rows, ds.Columns = array_xyz.shape[1], array_xyz.shape[0]
        ds.PixelSpacing = [float(row_spacing), float(col_spacing)]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 6) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.RescaleSlope, ds.RescaleIntercept = 1, int(rescale_intercept)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # [rows, columns]
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out
