"""Small DICOM studies with synthetic lesions and their ground-truth masks.

Each image is a 64x64 uint16 slice: an elliptical body with soft edges and
noise, and in ~40% of images a bright blob with a soft rim (the lesion). The
binary mask of the blob's core goes to ``_truth/masks`` for every image
(all zeros when there is no lesion), so a segmentation model has negatives.
Headers carry identifiers where real ones do: PatientName, PatientID (MRN),
PatientBirthDate, OtherPatientIDsSequence (身份证号), AccessionNumber,
ReferringPhysicianName, and a private block (group 0x0011, creator
``MEDLLM SYNTH``) holding the phone number and the address.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from medllm_pipelines.lib.synth.defects import TRUNCATED_FILE, Defect, DefectRates, truncate_bytes
from medllm_pipelines.lib.synth.determinism import derived_uid
from medllm_pipelines.lib.synth.files import OutputTree
from medllm_pipelines.lib.synth.institutions import Institution
from medllm_pipelines.lib.synth.people import Fakers, Person, draw_zh_name
from medllm_pipelines.lib.synth.plans import PatientPlan

IMAGE_SIZE = 64
LESION_RATE = 0.40
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "MEDLLM SYNTH"
PRIVATE_PHONE_ELEMENT = 0x01  # -> tag (0011,1001), LO
PRIVATE_ADDRESS_ELEMENT = 0x02  # -> tag (0011,1002), LT
PIXEL_SPACING_MM = 5.0


@dataclass(frozen=True)
class ImageTruth:
    """Ground truth of one written image (no identifiers)."""

    institution: str
    file: str
    mask_file: str
    study: str
    instance_number: int
    modality: str
    lesion: bool
    lesion_pixels: int
    patient_resource_id: str
    defect: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImagingOutput:
    images: list[ImageTruth] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    studies: int = 0
    accession_numbers: dict[str, list[str]] = field(default_factory=dict)  # patient resource id -> numbers


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x / width))


def render_slice(modality: str, lesion: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stored pixel values (uint16) and the lesion mask (uint8) of one slice."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(float)
    cy, cx = 32 + rng.normal(0, 1.5), 32 + rng.normal(0, 1.5)
    ry, rx = rng.uniform(20, 25), rng.uniform(24, 29)
    rho = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    body = _soft_step(1.0 - rho, 0.04)
    oy, ox = cy + rng.uniform(-6, 6), cx + rng.uniform(-8, 8)
    organ = _soft_step(1.0 - np.sqrt(((yy - oy) / 9.0) ** 2 + ((xx - ox) / 12.0) ** 2), 0.08)
    if modality == "CT":
        image = -1000.0 + 1040.0 * body + 25.0 * organ + rng.normal(0.0, 12.0, body.shape)
        amplitude = rng.uniform(160.0, 300.0)
    else:
        image = np.abs(rng.normal(0.0, 15.0, body.shape)) + 320.0 * body + 80.0 * organ
        image = image + rng.normal(0.0, 18.0, body.shape) * body
        amplitude = rng.uniform(380.0, 650.0)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    if lesion:
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.55)
        ly, lx = cy + reach * ry * np.sin(angle), cx + reach * rx * np.cos(angle)
        radius = rng.uniform(3.0, 7.0)
        distance = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2)
        image = image + amplitude * _soft_step(radius - distance, 0.8)
        mask = (distance <= radius).astype(np.uint8)
    offset = 1024.0 if modality == "CT" else 0.0
    stored = np.clip(np.rint(image + offset), 0, 4095).astype(np.uint16)
    return stored, mask


def _pn(person: Person) -> str:
    """DICOM PN: alphabetic group, plus the ideographic group for Chinese names."""
    alphabetic = f"{person.family_en}^{person.given_en}"
    if person.family_zh:
        return f"{alphabetic}={person.family_zh}^{person.given_zh}"
    return alphabetic


class StudyWriter:
    """Writes the imaging studies of one institution."""

    def __init__(self, tree: OutputTree, institution: Institution, seed: int, rng: np.random.Generator,
                 defect_rng: np.random.Generator, rates: DefectRates, fakers: Fakers) -> None:
        self.tree = tree
        self.institution = institution
        self.seed = seed
        self.rng = rng
        self.defect_rng = defect_rng
        self.rates = rates
        self.fakers = fakers
        self.output = ImagingOutput()

    def _referring_physician(self) -> str:
        if self.institution.language == "zh":
            family, given, family_py, given_py = draw_zh_name(self.rng, "male" if self.rng.random() < 0.5 else "female")
            return f"{family_py}^{given_py}={family}^{given}"
        return f"{self.fakers.en.last_name()}^{self.fakers.en.first_name()}"

    def write_study(self, plan: PatientPlan) -> None:
        assert plan.imaging_visit is not None
        registration = plan.registration
        person = registration.person
        inst = self.institution
        self.output.studies += 1
        study_number = self.output.studies
        study_folder = f"study-{study_number:05d}"
        visit = plan.visits[plan.imaging_visit]
        moment: datetime = visit.start + timedelta(minutes=int(self.rng.integers(30, 180)))
        modality = "CT" if self.rng.random() < 0.6 else "MR"
        body_part = str(self.rng.choice(["CHEST", "ABDOMEN"] if modality == "CT" else ["HEAD", "ABDOMEN"]))
        n_images = int(self.rng.integers(1, 4))
        accession = f"{modality}{moment:%Y%m%d}{int(self.rng.integers(1000, 10000))}"
        self.output.accession_numbers.setdefault(registration.patient_id, []).append(accession)
        uid_root = ("medllm-synth", self.seed, inst.code, study_folder)
        study_uid = derived_uid(*uid_root, "study")
        series_uid = derived_uid(*uid_root, "series")
        frame_uid = derived_uid(*uid_root, "frame-of-reference")
        referring = self._referring_physician()
        description = {"CHEST": "胸部平扫" if inst.language == "zh" else "Chest without contrast",
                       "ABDOMEN": "腹部增强" if inst.language == "zh" else "Abdomen with contrast",
                       "HEAD": "头颅平扫" if inst.language == "zh" else "Head without contrast"}[body_part]

        for number in range(1, n_images + 1):
            lesion = bool(self.rng.random() < LESION_RATE)
            pixels, mask = render_slice(modality, lesion, self.rng)
            ds = self._dataset(person, registration.mrn, modality, body_part, description, moment, accession,
                               referring, study_uid, series_uid, frame_uid,
                               derived_uid(*uid_root, "instance", number), number, pixels)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
            relpath = f"{inst.code}/dicom/{study_folder}/IM{number:05d}.dcm"
            defect = None
            if self.rates.truncated_file > 0 and self.defect_rng.random() < self.rates.truncated_file:
                data = truncate_bytes(data, self.defect_rng)
                defect = TRUNCATED_FILE
                self.output.defects.append(Defect(TRUNCATED_FILE, inst.code, relpath, None, None, None))
            self.tree.write(relpath, data)
            mask_relpath = f"_truth/masks/{inst.code}/{study_folder}/IM{number:05d}.npy"
            mask_buffer = io.BytesIO()
            np.save(mask_buffer, mask, allow_pickle=False)
            self.tree.write(mask_relpath, mask_buffer.getvalue())
            self.output.images.append(ImageTruth(inst.code, relpath, mask_relpath, study_folder, number, modality,
                                                 lesion, int(mask.sum()), registration.patient_id, defect))

    def _dataset(self, person: Person, mrn: str, modality: str, body_part: str, description: str,
                 moment: datetime, accession: str, referring: str, study_uid: str, series_uid: str,
                 frame_uid: str, sop_uid: str, number: int, pixels: np.ndarray) -> Dataset:
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = moment.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = moment.strftime("%H%M%S")
        ds.ContentTime = (moment + timedelta(seconds=number)).strftime("%H%M%S")
        ds.AccessionNumber = accession
        ds.Modality = modality
        ds.Manufacturer = "MEDLLM"
        ds.InstitutionName = self.institution.name
        ds.ReferringPhysicianName = referring
        ds.StudyDescription = description
        ds.SeriesDescription = description
        ds.PatientName = _pn(person)
        ds.PatientID = mrn
        ds.IssuerOfPatientID = self.institution.code.upper()
        ds.PatientBirthDate = person.birth_date.strftime("%Y%m%d")
        ds.PatientSex = "M" if person.sex == "male" else "F"
        ds.PatientAge = f"{int(person.age_years(moment.date())):03d}Y"
        if person.resident_id:
            other = Dataset()
            other.PatientID = person.resident_id
            other.IssuerOfPatientID = "PRC RESIDENT ID"
            other.TypeOfPatientID = "TEXT"
            ds.OtherPatientIDsSequence = Sequence([other])
        ds.PatientIdentityRemoved = "NO"
        ds.BurnedInAnnotation = "NO"
        ds.BodyPartExamined = body_part
        ds.SliceThickness = 5.0
        if modality == "CT":
            ds.KVP = 120
            ds.ConvolutionKernel = "STANDARD"
        else:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 500.0
            ds.EchoTime = 15.0
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 1.5
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-160.0, -160.0, float(number - 1) * 5.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = IMAGE_SIZE
        ds.Columns = IMAGE_SIZE
        ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        if modality == "CT":
            ds.RescaleIntercept = -1024.0
            ds.RescaleSlope = 1.0
            ds.RescaleType = "HU"
            ds.WindowCenter = 40.0
            ds.WindowWidth = 400.0
        else:
            ds.WindowCenter = 400.0
            ds.WindowWidth = 900.0
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(PRIVATE_PHONE_ELEMENT, "LO", person.phone)
        block.add_new(PRIVATE_ADDRESS_ELEMENT, "LT", person.address.text)
        ds.PixelData = pixels.tobytes()
        return ds


def write_imaging(tree: OutputTree, institution: Institution, plans: list[PatientPlan], seed: int,
                  rng: np.random.Generator, defect_rng: np.random.Generator, rates: DefectRates,
                  fakers: Fakers) -> ImagingOutput:
    """One study per plan that has an imaging visit, numbered in plan order."""
    writer = StudyWriter(tree, institution, seed, rng, defect_rng, rates, fakers)
    for plan in plans:
        if plan.imaging_visit is not None:
            writer.write_study(plan)
    return writer.output
