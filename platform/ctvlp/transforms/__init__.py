"""Per-volume transforms: pure array functions (``array``), volume I/O (``io``), header repair
(``header``), input checks (``validate``), one study's checks and transforms as ingest and the
predictor run them (``study``), the bad-input reason codes (``reasons``) and row/batch wrappers
(``keyed``).

Arrays are ``[D, H, W] = (z, y, x)`` in RAS+ after :func:`to_canonical` (docs/DESIGN.md).
"""

from ctvlp.transforms.array import (
    anatomy_boxes,
    apply_rescale,
    crop_to_anatomies,
    group_mask,
    hu_to_uint8,
    hu_window,
    resample,
    resampled_shape,
    to_canonical,
    to_uint8,
    voxel_sizes,
)
from ctvlp.transforms.header import repair_header, rescale_from_meta
from ctvlp.transforms.io import dicom_series_bytes, nifti_bytes, read_dicom_series, read_nifti
from ctvlp.transforms.keyed import VolumePrep, decode_row, map_rows, prepare_row, process_row
from ctvlp.transforms.validate import VolumeError

__all__ = [
    "VolumeError",
    "VolumePrep",
    "anatomy_boxes",
    "apply_rescale",
    "crop_to_anatomies",
    "decode_row",
    "dicom_series_bytes",
    "group_mask",
    "hu_to_uint8",
    "hu_window",
    "map_rows",
    "nifti_bytes",
    "prepare_row",
    "process_row",
    "read_dicom_series",
    "read_nifti",
    "repair_header",
    "rescale_from_meta",
    "resample",
    "resampled_shape",
    "to_canonical",
    "to_uint8",
    "voxel_sizes",
]
