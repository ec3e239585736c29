"""One DICOM instance accepted or refused, then preprocessed for the imaging models.

Refusals carry a stable ``reason`` (``ScenarioInputError``), never a header value:

* ``not_dicom`` (415): no Part-10 preamble and ``DICM`` prefix, or pydicom cannot parse it;
* ``not_an_image``: no ``PixelData`` (a structured report, a presentation state, a plan...);
* ``burned_in_annotation``: ``BurnedInAnnotation`` YES, or anything but an explicit NO on an instance that
  typically carries burned-in text: a modality the project's DICOM profile quarantines when the attribute is
  missing (``dicom_profile.yaml`` ``burned_in.quarantine_when_missing_for``: US, SC, XC, ES, OT...) or a
  Secondary Capture SOP class (``1.2.840.10008.5.1.4.1.1.7`` and its multi-frame variants), whatever the modality;
* ``image_too_large``: more than ``max_pixels`` pixels, judged from the header before anything is decoded;
* ``unsupported_pixel_data``: float pixel data, more than one frame, colour (not MONOCHROME1/2), a side smaller
  than the networks take, a rescale slope that is not positive, or pixels pydicom cannot decode here;
* ``deidentification_failed``: the de-identifier raised (its message may quote a value: only the type is kept).

Preprocessing (``preprocess``) turns stored pixels into what the networks were trained on: the modality LUT,
MONOCHROME1 inverted, padding pixels filled, a 3x3 median filter. The networks' own per-slice z-score
(``images.normalise_slice``) is applied by ``ImagingPredictor`` and by the explanation, never here, so that a
served slice is normalised exactly as training normalised it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medllm_pipelines.lib.deidentify.dicom import default_profile
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError

NOT_DICOM = "not_dicom"
NOT_AN_IMAGE = "not_an_image"
BURNED_IN_ANNOTATION = "burned_in_annotation"
UNSUPPORTED_PIXEL_DATA = "unsupported_pixel_data"
IMAGE_TOO_LARGE = "image_too_large"
DEIDENTIFICATION_FAILED = "deidentification_failed"
REFUSAL_REASONS = (NOT_DICOM, NOT_AN_IMAGE, BURNED_IN_ANNOTATION, UNSUPPORTED_PIXEL_DATA, IMAGE_TOO_LARGE,
                   DEIDENTIFICATION_FAILED)

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC, and the multi-frame SC classes .7.1 to .7.4
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
# The smallest side the networks take: the densest classifier halves a slice four times before pooling.
MIN_IMAGE_SIDE = 16
MEDIAN_SIZE = 3

Deidentify = Callable[[Dataset], Dataset]


def _refuse(reason: str, detail: str) -> ScenarioInputError:
    return ScenarioInputError(reason, detail, status=415 if reason == NOT_DICOM else 422)


def parse_part10(data: bytes) -> Dataset:
    """The dataset of DICOM Part-10 bytes: the 128-byte preamble and ``DICM`` are required."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise _refuse(NOT_DICOM, "not a DICOM Part-10 file (no 128-byte preamble followed by 'DICM')")
    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(data)))
        for element in ds:  # pydicom converts lazily: a broken element fails here, not later
            _ = element.value
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a broken file; the message may quote it
        raise _refuse(NOT_DICOM, f"the DICOM file cannot be parsed ({type(exc).__name__})") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}) or "SOPClassUID" not in ds:
        raise _refuse(NOT_DICOM, "the DICOM file has no transfer syntax in its file meta or no SOP class")
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def burned_in_suspect(ds: Dataset) -> bool:
    """True when the instance may show burned-in text: YES, or no explicit NO on a screen-capture-like instance."""
    value = _text(ds, "BurnedInAnnotation")
    if value == "YES":
        return True
    if value == "NO":
        return False
    suspect_modalities = default_profile().burned_in_suspect_modalities
    return _text(ds, "Modality") in suspect_modalities or _text(ds, "SOPClassUID").startswith(SECONDARY_CAPTURE_PREFIX)


def check_header(ds: Dataset, *, max_pixels: int) -> None:
    """Every refusal the header alone decides, in the order a caller can act on them."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise _refuse(UNSUPPORTED_PIXEL_DATA, "float pixel data (a parametric map) is not analysed")
        raise _refuse(NOT_AN_IMAGE, f"the instance has no pixel data (modality {_safe_code(ds, 'Modality')})")
    if burned_in_suspect(ds):
        raise _refuse(BURNED_IN_ANNOTATION, "the instance has or may have burned-in annotation (BurnedInAnnotation "
                                            "is YES, or not an explicit NO on a screen-capture-like instance)")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > max_pixels:
        raise _refuse(IMAGE_TOO_LARGE, f"{rows}x{columns} pixels exceed the limit of {max_pixels}")
    if min(rows, columns) < MIN_IMAGE_SIDE:
        raise _refuse(UNSUPPORTED_PIXEL_DATA, f"{rows}x{columns} pixels: the networks take at least "
                                              f"{MIN_IMAGE_SIDE} pixels a side")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise _refuse(UNSUPPORTED_PIXEL_DATA, f"{frames} frames: only single-frame slices are analysed")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = _text(ds, "PhotometricInterpretation")
    if samples != 1 or photometric not in GRAYSCALE:
        raise _refuse(UNSUPPORTED_PIXEL_DATA, f"colour pixel data ({_safe_code(ds, 'PhotometricInterpretation')}, "
                                              f"{samples} samples): only MONOCHROME1/2 slices are analysed")
    try:
        slope = float(ds.get("RescaleSlope", 1.0))
        _ = float(ds.get("RescaleIntercept", 0.0)), int(ds.get("PixelPaddingValue", 0))
    except (TypeError, ValueError):
        raise _refuse(UNSUPPORTED_PIXEL_DATA, "a rescale or padding value that is not a number") from None
    if not slope > 0.0:
        raise _refuse(UNSUPPORTED_PIXEL_DATA, "a rescale slope that is not positive")


def _safe_code(ds: Dataset, keyword: str) -> str:
    """A code string (CS) for a message: letters, digits and a few separators only, at most 16 characters."""
    value = _text(ds, keyword)
    return value[:16] if value and all(c.isalnum() or c in " _-" for c in value) else "unknown"


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The stored pixel values of a single-frame grey slice, (rows, columns)."""
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; the message may quote the file
        raise _refuse(UNSUPPORTED_PIXEL_DATA, f"the pixel data cannot be decoded here ({type(exc).__name__})") from None
    if pixels.ndim != 2:
        raise _refuse(UNSUPPORTED_PIXEL_DATA, f"decoded pixel array has {pixels.ndim} dimensions, not 2")
    return pixels


def deidentified(ds: Dataset, deidentify: Deidentify | None) -> Dataset:
    """``deidentify(ds)`` when given; a failure is refused by exception type only."""
    if deidentify is None:
        return ds
    try:
        return deidentify(ds)
    except ScenarioInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the message may quote an identifier
        raise _refuse(DEIDENTIFICATION_FAILED, f"the instance could not be de-identified ({type(exc).__name__})"
                      ) from None


@dataclass(frozen=True)
class PreprocessedSlice:
    """What the networks take (``model_input``) and what measurements read (``modality_values``)."""

    modality_values: np.ndarray  # float64, modality LUT applied (HU for CT), MONOCHROME1 inverted, padding filled
    model_input: np.ndarray  # float32, modality_values median-filtered (or not, when denoise is off)
    intensity_unit: str
    padding_pixels: int


def intensity_unit(ds: Dataset) -> str:
    """The unit of the modality LUT's output: HU for CT (or RescaleType HU), else the rescale type or stored units."""
    rescale_type = _text(ds, "RescaleType")
    if rescale_type == "HU" or (_text(ds, "Modality") == "CT" and "RescaleSlope" in ds):
        return "HU"
    return rescale_type.lower() if rescale_type and rescale_type.isalnum() else "stored value units"


def preprocess(ds: Dataset, stored: np.ndarray, *, denoise: bool = True) -> PreprocessedSlice:
    """Modality LUT, MONOCHROME1 inversion, padding pixels filled with the darkest real pixel, 3x3 median.

    The per-slice z-score the networks were trained with is left to ``ImagingPredictor`` (z-scores do not
    change under the LUT's positive linear rescale, so a model trained on stored values sees the same input).
    """
    from pydicom.pixels import apply_modality_lut
    from scipy.ndimage import median_filter

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    padding = stored == int(ds.PixelPaddingValue) if "PixelPaddingValue" in ds else np.zeros(stored.shape, bool)
    if padding.all():
        padding = np.zeros(stored.shape, dtype=bool)
    real = values[~padding]
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        values = real.max() + real.min() - values
    if padding.any():
        values = np.where(padding, values[~padding].min(), values)
    model_input = median_filter(values, size=MEDIAN_SIZE, mode="nearest") if denoise else values
    return PreprocessedSlice(values, np.asarray(model_input, dtype=np.float32), intensity_unit(ds),
                             int(padding.sum()))


def pixel_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing; None when absent or not two positive numbers."""
    spacing: Any = ds.get("PixelSpacing")
    try:
        row, column = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return None
    return (row, column) if row > 0 and column > 0 else None


@dataclass(frozen=True)
class AcceptedInstance:
    """An instance that passed every check, de-identified, its pixels decoded and preprocessed."""

    dataset: Dataset
    stored: np.ndarray  # (rows, columns) as stored
    prepared: PreprocessedSlice
    deidentified: bool  # whether a de-identifier ran on it


def accept_instance(data: bytes, *, deidentify: Deidentify | None, max_pixels: int,
                    denoise: bool = True) -> AcceptedInstance:
    """Parse, check, de-identify, decode and preprocess one instance (the checks run before de-identification)."""
    ds = parse_part10(data)
    check_header(ds, max_pixels=max_pixels)
    ds = deidentified(ds, deidentify)
    stored = decode_pixels(ds)
    try:
        prepared = preprocess(ds, stored, denoise=denoise)
    except Exception as exc:  # noqa: BLE001 - an odd modality LUT; the message may quote the header
        raise _refuse(UNSUPPORTED_PIXEL_DATA, f"the modality LUT cannot be applied ({type(exc).__name__})") from None
    return AcceptedInstance(ds, stored, prepared, deidentify is not None)
