"""``lib.synth`` exports its names lazily: the de-identifier and the service read ``catalog`` without importing
the generator (pandas, pydicom)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import medllm_pipelines.lib.synth as synth


def test_every_exported_name_resolves() -> None:
    assert set(synth.__all__) == set(synth._MODULE_OF)
    for name in synth.__all__:
        assert getattr(synth, name) is getattr(sys.modules[f"{synth.__name__}.{synth._MODULE_OF[name]}"], name)
    with pytest.raises(AttributeError, match="no attribute 'generate_everything'"):
        _ = synth.generate_everything  # type: ignore[attr-defined]


def test_reading_the_catalog_does_not_import_the_generator() -> None:
    code = ("import sys; import medllm_pipelines.lib.synth.catalog; "
            "assert 'medllm_pipelines.lib.synth.hospital' not in sys.modules, 'generator imported'; "
            "assert 'pandas' not in sys.modules, 'pandas imported'; "
            "from medllm_pipelines.lib.synth import generate_hospital, INSTITUTIONS; "
            "assert callable(generate_hospital) and INSTITUTIONS")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
