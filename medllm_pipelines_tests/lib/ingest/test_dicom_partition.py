"""One institution's DICOM objects indexed into instance and frame tables that reconcile and summarise."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pandas as pd
import pytest

from medllm_pipelines.lib.ingest.dicom_partition import index_dicom_partition, summarise_dicom_index

pydicom_data = pytest.importorskip("pydicom.data")


class ObjectStore:
    """The raw zone as the partition indexer reads it: decrypted objects by content hash."""

    def __init__(self, contents: list[bytes]) -> None:
        self.objects = {hashlib.sha256(c).hexdigest(): c for c in contents}

    def get_object(self, sha256: str) -> bytes:
        return self.objects[sha256]

    def ledger_rows(self, institution: str) -> pd.DataFrame:
        return pd.DataFrame({"content_sha256": sorted(self.objects), "institution": institution})


def bundled_file(name: str) -> bytes:
    return Path(pydicom_data.get_testdata_file(name)).read_bytes()


def _instance(study: str, series: str, number: int, patient: str = "P1", **extra) -> dict:
    return {"institution": "h1", "study_uid": study, "series_uid": series, "sop_instance_uid": f"{series}.{number}",
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "modality": "CT", "rows": 64, "columns": 64,
            "number_of_frames": 1, "patient_id": patient, "study_date": "20240305", "burned_in_annotation": None,
            "instance_number": number, **extra}


def test_study_and_series_summaries_flag_gaps_and_patient_mix_ups():
    instances = pd.DataFrame([
        _instance("1.1", "1.1.1", 1), _instance("1.1", "1.1.1", 2), _instance("1.1", "1.1.1", 4),
        _instance("1.1", "1.1.2", 1, modality="MR", burned_in_annotation="YES"),
        _instance("2.2", "2.2.1", 1), _instance("2.2", "2.2.1", 2, patient="P2"),
    ])

    studies, series = summarise_dicom_index(instances)

    by_series = series.set_index("series_uid")
    assert by_series.loc["1.1.1", ["instances", "first_instance_number", "last_instance_number",
                                   "missing_instance_numbers"]].tolist() == [3, 1, 4, 1]
    assert bool(by_series.loc["1.1.2", "burned_in_annotation"]) is True
    by_study = studies.set_index("study_uid")
    assert by_study.loc["1.1", ["series", "instances", "modalities", "consistent_patient"]].tolist() == [
        2, 4, "CT\\MR", True]
    assert bool(by_study.loc["2.2", "consistent_patient"]) is False



def test_a_partition_reconciles_and_describes_only_itself():
    ct, mr = bundled_file("CT_small.dcm"), bundled_file("MR_small.dcm")
    store = ObjectStore([ct, mr, ct[:-2000]])  # the third file is cut inside its pixel data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = index_dicom_partition(store, store.ledger_rows("hzsf"), partition="hzsf", asset="ingest/dicom_instances")

    instances = index.instances_metadata()
    assert (instances["records_in"], instances["records_out"], instances["records_quarantined"]) == (3, 2, 1)
    assert instances["dagster/row_count"] == len(index.instances_frame()) == 2
    assert instances["rows_by_institution"] == {"hzsf": 2}
    assert instances["quarantined_by_reason"] == {"truncated_file": 1}
    assert instances["dicom_hierarchy_by_institution"]["hzsf"]["studies"] == 2
    assert index.frames_metadata()["dagster/row_count"] == len(index.frames_frame())
    assert list(index.frames_frame().columns)[-2:] == ["institution", "source_object"]


def test_a_partition_without_dicom_has_empty_tables_with_their_columns():
    store = ObjectStore([])

    index = index_dicom_partition(store, store.ledger_rows("whsy"), partition="whsy", asset="ingest/dicom_instances")

    assert index.instances_frame().empty and "sop_instance_uid" in index.instances_frame().columns
    assert index.instances_metadata()["dicom_hierarchy_by_institution"] == {}
    assert index.instances_metadata()["reconciled"] is True
