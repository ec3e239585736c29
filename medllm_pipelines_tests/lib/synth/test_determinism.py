"""Same arguments, same bytes: downstream hashes and lineage depend on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medllm_pipelines.lib.synth import DefectRates, generate_hospital


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    generate_hospital(tmp_path / "a", patients=30, seed=4, write_identities=True)
    generate_hospital(tmp_path / "b", patients=30, seed=4, write_identities=True)
    first, second = _tree_hashes(tmp_path / "a"), _tree_hashes(tmp_path / "b")
    assert first == second
    assert any(name.endswith(".dcm") for name in first)


def test_different_seed_gives_different_files(tmp_path: Path) -> None:
    generate_hospital(tmp_path / "a", patients=30, seed=4)
    generate_hospital(tmp_path / "b", patients=30, seed=5)
    first, second = _tree_hashes(tmp_path / "a"), _tree_hashes(tmp_path / "b")
    shared = set(first) & set(second)
    assert shared, "the layout is the same, so file names overlap"
    assert all(first[name] != second[name] for name in shared if name.endswith((".ndjson", ".dcm")))


def test_manifest_lists_the_hash_of_every_file_written(tmp_path: Path) -> None:
    manifest = generate_hospital(tmp_path, patients=20, seed=2)
    on_disk = _tree_hashes(tmp_path)
    on_disk.pop("_truth/manifest.json")
    assert manifest.files == on_disk


def test_regenerating_smaller_removes_only_its_own_stale_files(tmp_path: Path) -> None:
    generate_hospital(tmp_path, patients=40, seed=1, write_identities=True)
    foreign = tmp_path / "hzsf" / "fhir" / "bundles" / "notes-from-a-human.txt"
    foreign.write_text("not ours")
    generate_hospital(tmp_path, patients=10, seed=1)
    fresh = tmp_path.parent / f"{tmp_path.name}-fresh"
    generate_hospital(fresh, patients=10, seed=1)
    regenerated = _tree_hashes(tmp_path)
    assert regenerated.pop("hzsf/fhir/bundles/notes-from-a-human.txt")
    assert regenerated == _tree_hashes(fresh)
    assert not (tmp_path / "_truth" / "identities.jsonl").exists()


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    generate_hospital(tmp_path, patients=15, seed=3, defect_rates=DefectRates.none())
    assert not [p for p in tmp_path.rglob(".*")]


def test_progress_reports_every_patient_record(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    manifest = generate_hospital(tmp_path, patients=12, seed=3,
                                 progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (manifest.patient_records, manifest.patient_records)
    assert [done for done, _ in calls] == list(range(1, manifest.patient_records + 1))
