"""Scenario A3, imaging analysis (clause 6.2.3): DICOM slices of one study in, lesion findings out.

``ImagingAnalyser`` (``analyser``) takes the imaging family's loaded predictors; ``default_deidentifier`` wires
the project's PS3.15 DICOM de-identifier (``lib/deidentify/dicom.deidentify_dataset``) with the same keyed
digests as the research release, so the SEG references the UIDs the released copy of the study carries.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset

from medllm_pipelines.lib.deidentify.dicom import DicomProfile, deidentify_dataset, default_profile
from medllm_pipelines.lib.deidentify.dicom_release import UID_DOMAIN
from medllm_pipelines.lib.deidentify.text.surrogates import patient_date_shift
from medllm_pipelines.lib.scenarios.errors import ScenarioInputError
from medllm_pipelines.lib.scenarios.imaging.analyser import STUDY_REASONS, ImagingAnalyser
from medllm_pipelines.lib.scenarios.imaging.instances import BURNED_IN_ANNOTATION, REFUSAL_REASONS

__all__ = ["REFUSAL_REASONS", "STUDY_REASONS", "ImagingAnalyser", "default_deidentifier"]


def default_deidentifier(keyed: Callable[[str], str], patient_pseudonym: str, *,
                         profile: DicomProfile | None = None) -> Callable[[Dataset], Dataset]:
    """The project's DICOM profile as a one-dataset de-identifier for ``ImagingAnalyser(deidentify=...)``.

    Args:
        keyed: the keyed digest (Vault transit HMAC in the platform, ``KeyedDigestCache``) the release uses:
            UIDs are digested under ``UID_DOMAIN`` and the date shift is the patient's, as in the release.
        patient_pseudonym: written to PatientName and PatientID.
    An instance the profile would quarantine (burned-in annotation) is refused, not analysed.
    """
    chosen = profile if profile is not None else default_profile()
    shift = patient_date_shift(keyed, patient_pseudonym)

    def uid_key(uid: str) -> str:
        return keyed(UID_DOMAIN + uid)

    def deidentify(ds: Dataset) -> Dataset:
        ds, report = deidentify_dataset(ds, profile=chosen, uid_key=uid_key, date_shift_days=shift,
                                        patient_pseudonym=patient_pseudonym)
        if report.quarantine:
            raise ScenarioInputError(BURNED_IN_ANNOTATION, "the DICOM profile quarantines this instance "
                                                           f"({report.quarantine_reason})")
        return ds

    return deidentify
