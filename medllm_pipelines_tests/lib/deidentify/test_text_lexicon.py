"""The name lexicon (``text/lexicon.py``): clinical and everyday words are never names."""

from __future__ import annotations

from medllm_pipelines.lib.common.versions import package_versions
from medllm_pipelines.lib.deidentify.text.lexicon import NEVER, name_lexicon


def test_whitelist_filters_tagger_and_pattern_names() -> None:
    lexicon = name_lexicon()
    for word in ("HEPARIN", "CARDIAC", "WITH", "Lasix", "metoprolol", "COPD"):
        assert lexicon.kind(word) == NEVER, word
    assert lexicon.kind("Kowalski") != NEVER


def test_stored_icd_words_are_those_of_the_installed_package() -> None:
    """The stored word list saves ~2 s per process; it must be exactly what the pinned package gives."""
    import json

    from medllm_pipelines.lib.deidentify.text import lexicon

    stored = json.loads(lexicon.ICD_WORDS_FILE.read_text(encoding="utf-8"))
    assert stored["version"] == package_versions([lexicon.ICD_PACKAGE])[lexicon.ICD_PACKAGE], (
        "simple-icd-10-cm changed: run `python -m medllm_pipelines.lib.deidentify.text.lexicon`")
    assert stored["words"] == sorted(stored["words"])
    assert set(stored["words"]) == lexicon._icd_words_from_package()
    assert {"diabetes", "mellitus", "hypertension", "fracture"} <= lexicon._icd_words()


def test_icd_words_stored_for_another_version_are_not_used(tmp_path, monkeypatch) -> None:
    import json

    from medllm_pipelines.lib.deidentify.text import lexicon

    other = tmp_path / "icd10cm_words.json"
    other.write_text(json.dumps({"version": "0.0.1", "words": ["kowalski"]}), encoding="utf-8")
    monkeypatch.setattr(lexicon, "ICD_WORDS_FILE", other)
    words = lexicon._icd_words()
    assert "kowalski" not in words and "diabetes" in words  # rebuilt from the package, not the stale file
    assert lexicon.write_icd_words(other) == len(words)
    assert json.loads(other.read_text(encoding="utf-8"))["version"] == package_versions([lexicon.ICD_PACKAGE])[lexicon.ICD_PACKAGE]
