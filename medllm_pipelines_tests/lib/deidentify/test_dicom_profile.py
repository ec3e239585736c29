"""The PS3.15 profile as data (``dicom/profile.py``): options change actions, unknown ones are refused."""

from __future__ import annotations

import pytest

from medllm_pipelines.lib.deidentify.dicom import load_profile


def test_profile_is_validated_data() -> None:
    profile = load_profile()
    assert profile.version and profile.standard.startswith("DICOM PS3.15")
    assert profile.options == ("retain_longitudinal_temporal_modified_dates", "clean_descriptors")
    basic_only = load_profile(options=[])
    assert basic_only.rule(0x00081030).action == "X"  # StudyDescription: removed without Clean Descriptors
    assert profile.rule(0x00081030).action == "C"
    with pytest.raises(ValueError):
        load_profile(options=["retain_everything"])
