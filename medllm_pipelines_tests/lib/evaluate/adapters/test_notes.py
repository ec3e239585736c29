"""The note generator's evaluation adapter: the dataset as training joined it, drafts scored field by field on test
and a validation sample, the training system's loss on every row, the retrieval baseline, canary exposure (planted by
the training, undefined without), the drafts' leak scan, and bad records refused."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medllm_pipelines.lib.common.structured_note import parse_note, render_note
from medllm_pipelines.lib.curate.dataset import join_features_with_splits
from medllm_pipelines.lib.curate.spec import load_spec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest, adapter_for
from medllm_pipelines.lib.evaluate.adapters import notes as adapter
from medllm_pipelines.lib.evaluate.gate import gate_policy
from medllm_pipelines.lib.evaluate.membership import DEFAULT_CANARY_FORMAT
from medllm_pipelines.lib.evaluate.outputs import ModelOutputs
from medllm_pipelines.lib.synth.consultations import KINDS, build_consultations
from medllm_pipelines.lib.synth.determinism import stream
from medllm_pipelines.lib.train.generative.network import GPT, GPTConfig
from medllm_pipelines.lib.train.generative.note_predictor import save_note_generator
from medllm_pipelines.lib.train.generative.note_runs import (
    CANARIES_FILE,
    CanarySettings,
    canary_settings,
    note_generator_config,
    plant_note_canaries,
    TEST_DRAFTS_FILE,
    read_canary_record,
    read_test_drafts,
    write_canary_record,
    write_test_drafts,
)
from medllm_pipelines.lib.train.generative.notes import NoteGeneratorConfig, train_note_generator
from medllm_pipelines.lib.train.generative.system import next_token_loss
from medllm_pipelines.lib.train.store import ModelStore

SPEC = load_spec("note_generator")
# Tiny and seeded: ~10 s on one core, and it already writes headed fields with items (fewer steps write blank lines).
TINY = NoteGeneratorConfig(n_layer=1, n_head=2, n_embd=32, block_size=384, instruction_steps=150, batch_size=8,
                           lr=1e-2, warmup_steps=10, max_new_tokens=40, seed=3, cpu_threads=1)
N_TRAIN, N_VAL, N_TEST = 40, 20, 12


def _tables() -> dict[str, pd.DataFrame]:
    """curate/note_pairs and curate/note_splits as the warehouse holds them, and de-identified patients."""
    pairs = build_consultations(N_TRAIN + N_VAL + N_TEST, stream(5, "notes-adapter-test"), kinds=KINDS)
    rows, splits, patients = [], [], []
    for i, pair in enumerate(pairs):
        split = "train" if i < N_TRAIN else "validation" if i < N_TRAIN + N_VAL else "test"
        rows.append({"text_id": pair.pair_id, "patient_pseudonym": f"P{i:04d}", "language": pair.language,
                     "visit_kind": pair.kind, "dialogue": pair.dialogue_text(), "note": render_note(pair.note)})
        splits.append({"text_id": pair.pair_id, "patient_pseudonym": f"P{i:04d}", "split": split})
        patients.append({"patient_pseudonym": f"P{i:04d}", "sex": "F" if i % 2 else "M",
                         "age_band": ("30-34", "50-54", "70-74")[i % 3], "institution": "demo"})
    # the warehouse's order is not the dataset's: the join sorts by text_id
    return {"dataset": pd.DataFrame(rows[::-1]), "splits": pd.DataFrame(splits), "patients": pd.DataFrame(patients)}


TABLES = _tables()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny generator trained on its train split with 2 canaries (as note_runs plants them), saved twice: with its
    canaries.json and, as a model trained without canaries, without."""
    dataset = adapter.dataset(SPEC, TABLES)
    rows = [(d, lang, parse_note(n, language=lang)) for d, n, lang in
            zip(*(dataset.split("train")[c] for c in ("dialogue", "note", "language")))]
    val = [(d, lang, parse_note(n, language=lang)) for d, n, lang in
           zip(*(dataset.split("validation")[c] for c in ("dialogue", "note", "language")))]
    planted_rows, canaries = plant_note_canaries(rows, CanarySettings(2, 2), seed=TINY.seed, spec_id=SPEC.id)
    torch.manual_seed(0)
    generator = train_note_generator(planted_rows, val, TINY, spec_id=SPEC.id)
    root = tmp_path_factory.mktemp("notes-eval")
    with_canaries = save_note_generator(generator, root / "with" / "model", spec_id=SPEC.id,
                                        dataset_version=dataset.version)
    write_canary_record(with_canaries, canaries)
    test = dataset.split("test")  # the test drafts, as note_runs keeps them after scoring the test split
    write_test_drafts(with_canaries, test["text_id"].tolist(),
                      [generator.generate(d, lang) for d, lang in zip(test["dialogue"], test["language"])],
                      dataset.version)
    without = shutil.copytree(with_canaries, root / "without" / "model")
    (without / CANARIES_FILE).unlink()
    return {"dataset": dataset, "canaries": canaries, "with": with_canaries, "without": without, "root": root}


def _request(trained: dict, model_dir: Path | str, **record: object) -> EvaluationRequest:
    base = {"model_dir": str(model_dir) if model_dir else "", "dataset_version": trained["dataset"].version,
            "registered_model": "note_generator", "registered_version": "3"}
    return EvaluationRequest(spec=SPEC, policy=gate_policy(SPEC.id, SPEC.evaluation), record={**base, **record},
                             dataset=trained["dataset"], tables=TABLES, store=ModelStore(trained["root"]), seed=0)


@pytest.fixture(scope="module")
def evaluated(trained: dict) -> tuple[ModelOutputs, float]:
    started = time.perf_counter()
    out = adapter.outputs(_request(trained, trained["with"]))
    return out, time.perf_counter() - started


# --------------------------------------------------------------------------------------------- dataset


def test_the_dataset_is_joined_as_the_training_asset_joins_it() -> None:
    assert adapter_for("note_generator").load() is adapter
    dataset = adapter.dataset(SPEC, TABLES)
    expected = join_features_with_splits(TABLES["dataset"], TABLES["splits"], id_column="text_id")
    assert dataset.version == expected.version and len(dataset.frame) == N_TRAIN + N_VAL + N_TEST
    assert dataset.rows_per_split == {"train": N_TRAIN, "validation": N_VAL, "test": N_TEST}
    with pytest.raises(KeyError, match="needs the tables \\['splits'\\]"):
        adapter.dataset(SPEC, {"dataset": TABLES["dataset"]})


# --------------------------------------------------------------------------------------------- scoring


def test_case_stats_count_field_items_and_leave_icd10_undefined_without_a_gold_code() -> None:
    gold = ["Chief complaint: cough for 3 days\nHistory: no fever; smoker\nAssessment: Acute bronchitis (J20.9)\n"
            "Plan: review in 1 week",
            "Chief complaint: headache\nPlan: rest"]
    drafts = [gold[0], "Chief complaint: headache\nHistory: nausea"]
    stats = adapter.case_stats(drafts, gold, ["en", "en"])
    assert stats.shape == (2, 5)
    np.testing.assert_array_equal(stats[0], [5, 0, 0, 1.0, 1.0])  # a perfect draft: 5 items, exact code, ROUGE-L 1
    assert stats[1, :3].tolist() == [1, 1, 1]  # headache right, nausea invented, rest missed
    assert math.isnan(stats[1, 3]) and 0.0 < stats[1, 4] < 1.0  # no gold code: undefined, never a 0 or a 1
    assert adapter.case_stats([""], [gold[0]], ["en"])[0, :4].tolist() == [0, 0, 5, 0.0]
    with pytest.raises(ValueError, match="must pair up"):
        adapter.case_stats(drafts, gold[:1], ["en", "en"])


def test_every_row_is_scored_with_drafts_on_test_and_a_validation_sample(evaluated, trained) -> None:
    out, _ = evaluated
    frame = out.frame
    assert out.task == "notes" and (out.model_name, out.model_version) == ("note_generator", "3")
    assert len(frame) == N_TRAIN + N_VAL + N_TEST and frame["example_id"].is_unique
    assert frame["example_id"].tolist() == trained["dataset"].frame["text_id"].tolist()
    generated = frame["generated"].to_numpy()
    test, val, train = out.rows("test"), out.rows("validation"), out.rows("train")
    assert generated[test].all() and not generated[train].any()
    assert generated[val].sum() == adapter.VALIDATION_CAP["demo"] == 8  # capped, seeded
    assert np.isnan(out.model[~generated]).all()
    drafted = out.model[generated]
    assert np.isfinite(drafted[:, [0, 1, 2, 4]]).all() and (drafted[:, :3] >= 0).all()
    assert ((drafted[:, 4] >= 0) & (drafted[:, 4] <= 1)).all()
    # tp + fn is the number of gold items: fixed by the gold notes, whatever the model wrote
    gold = trained["dataset"].frame.loc[generated]
    gold_items = [sum(len(set(parse_note(n, language=lang).items(f))) for f in parse_note(n).fields)
                  for n, lang in zip(gold["note"], gold["language"])]
    assert (drafted[:, 0] + drafted[:, 2]).tolist() == gold_items
    # ICD-10 exact match: NaN exactly where the gold note holds no code
    no_code = np.array([not parse_note(n, language=lang).icd10_codes
                        for n, lang in zip(gold["note"], gold["language"])])
    assert (np.isnan(drafted[:, 3]) == no_code).all()
    # the retrieval baseline on validation and test, never on train (it would retrieve the note itself)
    assert np.isnan(out.baseline[train]).all() and np.isfinite(out.baseline[test][:, [0, 1, 2, 4]]).all()
    assert out.baseline[test, 0].sum() > out.model[test, 0].sum()  # 150 steps of a tiny GPT lose to retrieval
    assert set(frame.loc[test, "sex"]) == {"F", "M"} and set(frame["age_band"]) == {"<40", "40-64", ">=65"}
    assert out.limits and "no decision threshold" in out.threshold_note


def test_the_trainings_test_drafts_are_reused_only_when_a_spot_check_reproduces_them(evaluated, trained,
                                                                                      tmp_path: Path) -> None:
    out, _ = evaluated
    [section] = [s for s in out.sections if s.key == "notes_by_language"]
    assert section.summary["drafts_source"].startswith("the training's test drafts, 4 of 12")
    dataset = trained["dataset"]
    assert read_test_drafts(trained["with"], "f" * 64) == {}  # drafts of another dataset are never reused
    forged = shutil.copytree(trained["with"], tmp_path / "model")
    record = json.loads((forged / TEST_DRAFTS_FILE).read_text())
    record["drafts"] = {key: "Chief complaint: forged" for key in record["drafts"]}
    (forged / TEST_DRAFTS_FILE).write_text(json.dumps(record))
    frame = dataset.frame.reset_index(drop=True)
    test_rows = np.flatnonzero(frame["split"] == "test")
    drafts, source = adapter._test_drafts(adapter._GptScorer(forged), forged, _request(trained, forged), frame,
                                          test_rows)
    assert source.startswith("generated here: 4 of 4 re-generated training drafts differed")
    assert "Chief complaint: forged" not in drafts
    assert drafts == list(read_test_drafts(trained["with"], dataset.version).values())  # what training wrote


def test_the_loss_is_the_training_systems_loss_and_is_defined_on_every_split(evaluated, trained) -> None:
    out, _ = evaluated
    loss = out.frame["loss"].to_numpy()
    assert np.isfinite(loss).all() and (loss > 0).all()
    scorer = adapter._GptScorer(trained["with"])
    row = trained["dataset"].frame.iloc[-1]
    [example] = scorer.examples([row.dialogue], [row.note], [row.language])
    ids, labels = torch.tensor([example["input_ids"][:-1]]), torch.tensor([example["labels"][1:]])
    with torch.no_grad():
        expected = next_token_loss(scorer.network.eval()(ids), labels).item()  # CausalLMSystem's criterion
    assert loss[-1] == pytest.approx(expected, rel=1e-5)
    # the generator learnt its training notes better than unseen ones (a membership signal exists)
    assert loss[out.rows("train")].mean() < loss[out.rows("test")].mean()


def test_the_engine_accepts_the_outputs(evaluated) -> None:
    from medllm_pipelines.lib.evaluate.engine import evaluate_outputs

    out, _ = evaluated
    policy = dataclasses.replace(gate_policy(SPEC.id, SPEC.evaluation), n_boot=30)
    evaluation = evaluate_outputs(SPEC.id, out, policy)
    assert evaluation.metrics["model"]["values"]["field_f1"] is not None
    assert 0.0 <= evaluation.membership["auc"] <= 1.0
    assert {c.name.split(" ")[0] for c in evaluation.gate.criteria} >= {"field_f1", "membership"}


def test_outputs_runs_within_the_demo_budget(evaluated) -> None:
    _, seconds = evaluated
    assert seconds < 25.0, f"outputs() took {seconds:.1f} s on 72 notes"


# --------------------------------------------------------------------------------------------- canaries


def test_the_training_plants_canaries_in_the_history_field_of_english_notes() -> None:
    rows = [(f"d{i}", "en" if i % 2 else "zh", parse_note("Chief complaint: cough\nHistory: fever", language="en"
                                                          if i % 2 else "zh")) for i in range(10)]
    unchanged, none = plant_note_canaries(rows, CanarySettings(), seed=1)
    assert unchanged == rows and none is None
    planted_rows, canaries = plant_note_canaries(rows, CanarySettings(3, 2), seed=1)
    changed = [i for i, (a, b) in enumerate(zip(rows, planted_rows)) if a != b]
    assert changed and all(rows[i][1] == "en" for i in changed)
    items = [planted_rows[i][2].items("history") for i in changed]
    assert all(item[0].startswith("my code is ") and item[-1] == "fever" for item in items)
    assert sum(len(item) - 1 for item in items) == 3 * 2  # 3 secrets, 2 notes each
    record = canaries.record()
    assert record["canary_format"] == DEFAULT_CANARY_FORMAT and record["prefix"] == "History: "
    assert len(record["secrets"]) == 3 and all(len(s) == 6 and s.isdigit() for s in record["secrets"])
    assert "fever" not in json.dumps(record) and "d1" not in json.dumps(record)  # no text of a note
    assert render_note(planted_rows[changed[0]][2]).splitlines()[1].startswith("History: my code is ")


def test_the_spec_plants_canaries_and_a_bad_setting_is_refused_naming_the_spec() -> None:
    assert canary_settings(SPEC, "demo") == CanarySettings(4, 2)
    assert "canaries" not in note_generator_config(SPEC, "demo").as_params()  # a training key, not a network one
    bad = dataclasses.replace(SPEC, training={**SPEC.training, "canaries": -1})
    with pytest.raises(ValueError, match="spec note_generator: canaries must be an integer >= 0"):
        note_generator_config(bad, "demo")
    assert canary_settings(dataclasses.replace(SPEC, training={}), "demo") == CanarySettings(0, 1)  # default: none


def test_canary_exposure_is_measured_for_each_planted_canary_and_control(evaluated, trained) -> None:
    out, _ = evaluated
    [section] = [s for s in out.sections if s.key == "canary_exposure"]
    summary = section.summary
    assert summary["status"] == "measured" and summary["canaries"] == 2 and summary["repeats"] == 2
    assert summary["max_possible_exposure_bits"] == pytest.approx(math.log2(10 ** 6))
    assert summary["max_measurable_exposure_bits"] == pytest.approx(math.log2(adapter.CANARY_CANDIDATES["demo"] + 1))
    assert 0.0 <= summary["max_exposure"] <= summary["max_measurable_exposure_bits"]
    [table] = section.tables
    assert [r[0] for r in table.rows] == ["canary 1", "canary 2", "control 1", "control 2"]
    text = json.dumps(section.as_dict())
    assert not any(secret in text for secret in trained["canaries"].planted.secrets)  # never the secrets


def test_a_memorised_canary_reaches_the_measurable_maximum_and_a_control_does_not(trained) -> None:
    secret = trained["canaries"].planted.secrets[0]

    class Memorised:  # a model that gives the first planted secret the highest probability of all
        def text_logprob_fn(self, prefix: str):
            assert prefix == "History: "
            return lambda texts: np.array([0.0 if secret in t else -10.0 - int(t[-6:]) % 997 / 100 for t in texts])

    section = adapter.canary_section(Memorised(), trained["with"], size="demo", seed=0)
    exposures = {row[0]: row[5] for row in section.tables[0].rows}
    assert exposures["canary 1"] == pytest.approx(math.log2(adapter.CANARY_CANDIDATES["demo"] + 1), abs=1e-3)
    assert exposures["control 1"] < 8
    assert section.summary["max_exposure"] == pytest.approx(exposures["canary 1"], abs=1e-3)


def test_a_model_trained_without_canaries_has_undefined_exposure_never_zero(trained) -> None:
    assert read_canary_record(trained["without"]) is None
    section = adapter.canary_section(adapter._GptScorer(trained["without"]), trained["without"], size="demo", seed=0)
    assert section.summary["status"] == "undefined" and section.summary["max_exposure"] is None
    assert "trained without canaries" in section.summary["reason"] and not section.tables


# --------------------------------------------------------------------------------------------- leak scan


def test_the_leak_scan_counts_identifier_spans_without_reporting_them(evaluated) -> None:
    drafts = ["History: seen by Dr John Smith; call 13812345678", "History: my code is 204518", "Plan: rest"]
    dialogues = ["Doctor: I am Dr John Smith.", "", ""]
    section = adapter.leak_scan_section(drafts, dialogues, ["204518"], sample_note="3 drafts")
    summary = section.summary
    assert summary["drafts_scanned"] == 3 and summary["drafts_with_identifier"] == 1
    labels = {row[0]: row[1:] for row in section.tables[0].rows}
    assert labels["NAME"] == (1, 1, 0) and labels["PHONE"] == (1, 0, 1)  # the name was in its dialogue
    assert summary["spans_not_in_own_dialogue"] == 1 and summary["drafts_with_planted_canary"] == 1
    text = json.dumps(section.as_dict())
    assert "John" not in text and "13812345678" not in text and "204518" not in text
    out, _ = evaluated
    [scan] = [s for s in out.sections if s.key == "leak_scan"]
    assert scan.summary["drafts_scanned"] == N_TEST + 8 and scan.summary["identifier_spans"] >= 0


def test_notes_by_language_reports_both_languages_of_the_test_split(evaluated) -> None:
    out, _ = evaluated
    [section] = [s for s in out.sections if s.key == "notes_by_language"]
    test = out.frame[out.rows("test")]
    for language in ("en", "zh"):
        assert section.summary[language]["n_notes"] == int((test["language"] == language).sum()) > 0
        assert 0.0 <= section.summary[language]["baseline_field_f1"] <= 1.0


# --------------------------------------------------------------------------------------------- bad input


def test_a_record_that_names_no_model_or_another_dataset_is_refused(trained) -> None:
    with pytest.raises(ValueError, match="names no model_dir"):
        adapter.outputs(_request(trained, ""))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        adapter.outputs(_request(trained, trained["root"] / "missing"))
    with pytest.raises(ValueError, match="the model was trained on dataset ffffffffffffffff"):
        adapter.outputs(_request(trained, trained["with"], dataset_version="f" * 64))


def test_a_model_folder_of_another_dataset_is_refused(trained, tmp_path: Path) -> None:
    other = tmp_path / "model"
    network = GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=1, n_embd=8))
    from medllm_pipelines.lib.train.generative.note_text import build_note_tokenizer

    tokenizer = build_note_tokenizer(["a b c d"])
    fake = type("G", (), {"network": network, "tokenizer": tokenizer, "config": dataclasses.replace(
        TINY, block_size=16, max_new_tokens=4, n_embd=8, n_head=1)})()
    save_note_generator(fake, other, spec_id=SPEC.id, dataset_version="0" * 64)
    with pytest.raises(ValueError, match="the model folder was trained on dataset 0000000000000000"):
        adapter.outputs(_request(trained, other))
