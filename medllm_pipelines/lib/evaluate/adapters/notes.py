"""Evaluation adapter of the note generator (spec note_generator): drafts scored field by field, losses, privacy.

What it hands the engine (task ``notes``, one row per dialogue -> note pair of the dataset the model was trained on):

- per note of the test split and of a seeded sample of the validation split (all of it at full size): the draft the
  registered model writes (greedy, ``NoteGeneratorPredictor``, the same code that serves it), scored against the gold
  note as ``note_runs`` scores the test split at training time: field true/false positives and false negatives over
  the six fields (``note_metrics.field_counts``), ICD-10 exact match (NaN where the gold note holds no code) and
  ROUGE-L F; train rows are not generated (NaN: too slow, and the engine reads test);
- per note of every split: the teacher-forced loss of the gold note given the dialogue, exactly the training
  system's loss (prompt masked, note and EOS scored, mean nats per token): what membership inference reads;
- the spec's baseline (``retrieval``: ``note_runs.RetrievalNoteBaseline`` fitted on the train split) on the same
  validation and test rows;
- sections: ``canary_exposure`` (Carlini et al. 2019: the secrets ``note_runs`` planted, each ranked among random
  secrets of the same template; undefined when the model was trained without canaries), ``leak_scan`` (the drafts
  scanned with the project's text de-identifier, patterns only) and ``notes_by_language`` (the headline scores per
  language, the slice this model is most likely to fail on).

The model's training is not trusted for its own figures: the test drafts the training kept are reused only when a
seeded sample of them, re-generated here from the registered weights, is identical; otherwise all are generated here.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medllm_pipelines.lib.curate.dataset import SplitDataset, join_features_with_splits
from medllm_pipelines.lib.curate.spec import DEMO_SIZE, ModelSpec
from medllm_pipelines.lib.evaluate.adapters import EvaluationRequest
from medllm_pipelines.lib.evaluate.outputs import CASE_COLUMNS, ModelOutputs, ReportSection, Table, person_groups

ID_COLUMN = "text_id"  # lib/curate/datasets_notes.py ID_COLUMN: what defs/train/notes.py joins the splits on
TASK = "notes"
REQUIRED_COLUMNS = (ID_COLUMN, "split", "patient_pseudonym", "dialogue", "note", "language")
# Validation notes generated (seeded sample); None: all of them. Test notes are always all generated.
VALIDATION_CAP = {"demo": 8, "full": None}
# Candidate secrets each canary is ranked among (a uniform sample of the 10^6 space, shared by all canaries).
CANARY_CANDIDATES = {"demo": 5_000, "full": 50_000}
CONTROL_CANARIES = 2  # secrets never planted, ranked the same way: what "nothing memorised" looks like here
LEAK_SCAN_CAP = {"demo": 80, "full": 400}
SPOT_CHECK = {"demo": 4, "full": 16}  # training drafts re-generated here before the rest are reused
LOSS_BATCH = 32
CLAUSE_PRIVACY = "5.4.3 privacy of the models (rows S-privacy, issue 12 item 9)"
CLAUSE_VALIDATION = "5.3.1 validation of the model (row V1, text generation)"
LANGUAGES = ("en", "zh")


# ----------------------------------------------------------------------------------------------- dataset
def dataset(spec: ModelSpec, tables: Mapping[str, pd.DataFrame]) -> SplitDataset:
    """The note pairs joined with their splits exactly as train/note_generator joins them (``text_id``), so that the
    version is the one the generator was trained on."""
    missing = [name for name in ("dataset", "splits") if name not in tables]
    if missing:
        raise KeyError(f"spec {spec.id}: the evaluation needs the tables {missing} (curate/note_pairs, note_splits)")
    return join_features_with_splits(tables["dataset"], tables["splits"], id_column=ID_COLUMN)


# ----------------------------------------------------------------------------------------------- scoring a note
def case_stats(generated: Sequence[str], gold: Sequence[str], languages: Sequence[str]) -> np.ndarray:
    """(n, 5) field tp, fp, fn, ICD-10 exact match (NaN: gold without a code) and ROUGE-L F of each draft.

    Both texts are read with ``parse_note`` in the row's language and ROUGE-L compares the rendered notes, as
    ``note_runs`` and ``note_metrics.score_notes`` do at training time.
    """
    from medllm_pipelines.lib.common.structured_note import FIELDS, parse_note, render_note
    from medllm_pipelines.lib.evaluate.note_metrics import field_counts, rouge_l

    if not len(generated) == len(gold) == len(languages):
        raise ValueError(f"{len(generated)} drafts, {len(gold)} gold notes and {len(languages)} languages must pair up")
    rows = np.full((len(gold), len(CASE_COLUMNS[TASK])), np.nan)
    for i, (text, reference, language) in enumerate(zip(generated, gold, languages, strict=True)):
        predicted, truth = parse_note(str(text), language=language), parse_note(str(reference), language=language)
        tp = fp = fn = 0
        for name in FIELDS:
            counts = field_counts(predicted, truth, name)
            tp, fp, fn = tp + counts.true_positive, fp + counts.predicted - counts.true_positive, \
                fn + counts.gold - counts.true_positive
        exact = (float(Counter(predicted.icd10_codes) == Counter(truth.icd10_codes)) if truth.icd10_codes
                 else np.nan)
        rows[i] = (tp, fp, fn, exact, rouge_l(render_note(predicted), render_note(truth)))
    return rows


# ----------------------------------------------------------------------------------------------- the model
class _GptScorer:
    """The project's GPT note generator of a model folder: drafts, the training system's loss, canary log-probs."""

    def __init__(self, model_dir: Path) -> None:
        from medllm_pipelines.lib.train.generative.note_predictor import NoteGeneratorPredictor

        self.predictor = NoteGeneratorPredictor.load(model_dir)
        self.network = self.predictor.network
        self.tokenizer = self.predictor.tokenizer
        self.threads = int(self.predictor.config.get("training_config", {}).get("cpu_threads", 0) or 0)

    @property
    def dataset_version(self) -> str | None:
        return self.predictor.config.get("dataset_version")

    def generate_many(self, dialogues: Sequence[str], languages: Sequence[str]) -> list[str]:
        return self.predictor.generate_many(dialogues, languages)

    def examples(self, dialogues: Sequence[str], notes: Sequence[str], languages: Sequence[str]
                 ) -> list[dict[str, list[int]]]:
        """The training's encoding: prompt (masked) + ``render_note(parse_note(note))`` + EOS, cut to the block."""
        from medllm_pipelines.lib.common.structured_note import parse_note, render_note
        from medllm_pipelines.lib.train.generative.note_text import BOS, EOS, encode, note_prompt
        from medllm_pipelines.lib.train.generative.system import instruction_example

        bos, eos = self.tokenizer.token_to_id(BOS), self.tokenizer.token_to_id(EOS)
        block = self.network.config.block_size
        return [instruction_example(encode(self.tokenizer, note_prompt(d, lang)),
                                    encode(self.tokenizer, render_note(parse_note(n, language=lang))),
                                    bos_id=bos, eos_id=eos, max_length=block + 1)
                for d, n, lang in zip(dialogues, notes, languages, strict=True)]

    def losses(self, dialogues: Sequence[str], notes: Sequence[str], languages: Sequence[str]) -> np.ndarray:
        """Teacher-forced mean next-token NLL of each gold note (and EOS) given its dialogue: the system's loss."""
        import torch

        from medllm_pipelines.lib.train.generative.note_text import PAD
        from medllm_pipelines.lib.train.generative.system import InstructionExamples, pad_instruction_batch

        examples = InstructionExamples(self.examples(dialogues, notes, languages))
        pad = self.tokenizer.token_to_id(PAD)
        order = np.argsort([len(e["input_ids"]) for e in examples.examples], kind="stable")
        out = np.full(len(order), np.nan)
        self.network.eval()
        with torch.no_grad():
            for start in range(0, len(order), LOSS_BATCH):
                rows = order[start:start + LOSS_BATCH]
                inputs, targets = pad_instruction_batch([examples[int(i)] for i in rows], pad)
                out[rows] = _masked_mean_nll(self.network(inputs), targets)
        return out

    def text_logprob_fn(self, prefix: str) -> Callable[[Sequence[str]], np.ndarray]:
        """texts -> ln P(prefix + text | BOS) under the network (``membership.causal_lm_text_logprob_fn``)."""
        from medllm_pipelines.lib.evaluate.membership import causal_lm_text_logprob_fn
        from medllm_pipelines.lib.train.generative.note_text import BOS, PAD, encode

        return causal_lm_text_logprob_fn(self.network, lambda text: encode(self.tokenizer, prefix + text),
                                         bos_id=self.tokenizer.token_to_id(BOS), pad_id=self.tokenizer.token_to_id(PAD))


class _LoraScorer:
    """A LoRA adapter on the operator's base (``NoteLoraPredictor``): drafts and the tuning system's loss."""

    def __init__(self, adapter_dir: Path) -> None:
        from medllm_pipelines.lib.train.generative.note_lora import NoteLoraPredictor

        self.predictor = NoteLoraPredictor.load(adapter_dir)
        self.threads = 0

    @property
    def dataset_version(self) -> str | None:
        return self.predictor.config.get("dataset_version")

    def generate_many(self, dialogues: Sequence[str], languages: Sequence[str]) -> list[str]:
        return self.predictor.generate_many(dialogues, languages)

    def losses(self, dialogues: Sequence[str], notes: Sequence[str], languages: Sequence[str]) -> np.ndarray:
        """The tuning's encoding (``lora.encode_pair`` of ``note_runs._instruction_pairs``) and masked mean NLL."""
        import torch

        from medllm_pipelines.lib.train.generative.lora import InstructionPair, collate_examples, encode_pair
        from medllm_pipelines.lib.train.generative.note_text import note_prompt

        tokenizer, config = self.predictor.tokenizer, self.predictor.config
        examples = [encode_pair(tokenizer, InstructionPair(note_prompt(d, lang), n), int(config["max_length"]),
                                bool(config.get("add_bos", True)))
                    for d, n, lang in zip(dialogues, notes, languages, strict=True)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = np.full(len(examples), np.nan)
        self.predictor.model.eval()
        with torch.no_grad():
            for start in range(0, len(examples), LOSS_BATCH):
                batch = collate_examples(examples[start:start + LOSS_BATCH], pad)
                logits = self.predictor.model(input_ids=batch["input_ids"],
                                              attention_mask=batch["attention_mask"]).logits
                out[start:start + len(logits)] = _masked_mean_nll(logits[:, :-1], batch["labels"][:, 1:])
        return out


def _masked_mean_nll(logits: Any, targets: Any) -> np.ndarray:
    """Per row: mean cross-entropy over the target positions that are not IGNORE_INDEX."""
    import torch.nn.functional as F

    from medllm_pipelines.lib.train.generative.system import IGNORE_INDEX

    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    scored = (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return (nll.sum(dim=1) / scored).double().numpy()


def _load_scorer(record: Mapping[str, Any]) -> _GptScorer | _LoraScorer:
    from medllm_pipelines.lib.train.generative.note_runs import ADAPTER_TAG, LORA_ADAPTER

    model_dir = record.get("model_dir")
    if not model_dir:
        raise ValueError("the training record names no model_dir: no note generator to evaluate")
    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"the note generator folder {model_dir} of the training record does not exist")
    return _LoraScorer(Path(model_dir)) if record.get(ADAPTER_TAG) == LORA_ADAPTER else _GptScorer(Path(model_dir))


# ----------------------------------------------------------------------------------------------- sections
def canary_section(scorer: Any, model_dir: Path, *, size: str, seed: int) -> ReportSection:
    """Exposure of each planted canary (and of never-planted controls) among random secrets of the template."""
    from medllm_pipelines.lib.evaluate.membership import (
        canary_space_size,
        exposure,
        fill_canary,
        sample_canary_candidates,
    )
    from medllm_pipelines.lib.train.generative.note_runs import read_canary_record

    title = "Canary exposure (Carlini et al. 2019, The Secret Sharer)"
    record = read_canary_record(model_dir)
    if record is None or not hasattr(scorer, "text_logprob_fn"):
        reason = ("undefined: the model was trained without canaries (no canaries.json in its folder)"
                  if record is None else "undefined: canaries are planted only in the GPT path, not in a LoRA adapter")
        return ReportSection("canary_exposure", title, CLAUSE_PRIVACY,
                             summary={"status": "undefined", "reason": reason, "max_exposure": None},
                             text=reason + ". Nothing can be said about memorisation of rare training strings.")
    started = time.perf_counter()
    template, secrets = str(record["canary_format"]), [str(s) for s in record["secrets"]]
    space = canary_space_size(template)
    n_candidates = min(CANARY_CANDIDATES.get(size, CANARY_CANDIDATES[DEMO_SIZE]), space - len(secrets) - 1)
    controls_and_candidates = sample_canary_candidates(template, n_candidates + CONTROL_CANARIES, seed=seed,
                                                       exclude=secrets)
    controls, candidates = controls_and_candidates[:CONTROL_CANARIES], controls_and_candidates[CONTROL_CANARIES:]
    cached = _memoised(scorer.text_logprob_fn(str(record.get("prefix", ""))))
    cached(candidates)  # the shared candidates are scored once for every canary
    rows, planted_exposures, control_exposures = [], [], []
    for label, canary, planted in ([(f"canary {i + 1}", fill_canary(template, s), True)
                                    for i, s in enumerate(secrets)]
                                   + [(f"control {i + 1}", c, False) for i, c in enumerate(controls)]):
        result = exposure(cached, canary, candidates, space_size=space)
        (planted_exposures if planted else control_exposures).append(result.exposure)
        rows.append((label, "yes" if planted else "no (never in the training text)",
                     int(record.get("repeats", 1)) if planted else 0, result.rank, result.n_candidates,
                     round(result.exposure, 3),
                     None if result.extrapolated_exposure is None else round(result.extrapolated_exposure, 3)))
    max_possible = math.log2(space)
    max_measurable = math.log2(len(candidates) + 1)
    summary = {
        "status": "measured", "canaries": len(secrets), "repeats": int(record.get("repeats", 1)),
        "field": record.get("field"), "language": record.get("language"),
        "candidates": len(candidates), "space_size": space,
        "max_possible_exposure_bits": max_possible, "max_measurable_exposure_bits": max_measurable,
        "max_exposure": max(planted_exposures), "mean_exposure": float(np.mean(planted_exposures)),
        "mean_control_exposure": float(np.mean(control_exposures)) if control_exposures else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    text = (f"{len(secrets)} random {len(secrets[0])}-digit secrets (no PHI) were planted {summary['repeats']} "
            f"times each in the training notes' {record.get('field')} field; each is ranked by the model's "
            f"log-perplexity among {len(candidates):,} random secrets of the same template (sampled with seed "
            f"{seed}) and {CONTROL_CANARIES} never-planted controls are ranked the same way. Exposure = log2|R| - "
            f"log2(rank): about 1.4 bits means nothing memorised; the maximum for this template is "
            f"{max_possible:.1f} bits (rank 1 of 10^{len(secrets[0])}), {max_measurable:.1f} bits measurable with "
            "this sample (the extrapolated column fits a skew-normal to the candidates, as the paper's Section 4.3). "
            "The secrets themselves are not shown.")
    table = Table("Exposure per canary", ("canary", "planted", "repeats", "rank", "candidates", "exposure (bits)",
                                          "extrapolated (bits)"), tuple(rows))
    return ReportSection("canary_exposure", title, CLAUSE_PRIVACY, summary=summary, tables=(table,), text=text)


def _memoised(fn: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], np.ndarray]:
    """A log-prob function that scores each distinct text once (the candidates are shared by every canary)."""
    seen: dict[str, float] = {}

    def log_probs(texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            seen.update(zip(new, (float(v) for v in fn(new)), strict=True))
        return np.asarray([seen[t] for t in texts], dtype=np.float64)

    return log_probs


def leak_scan_section(drafts: Sequence[str], dialogues: Sequence[str], secrets: Sequence[str], *, sample_note: str
                      ) -> ReportSection:
    """Identifier-like spans in generated drafts (the project's Detector, patterns only), counted per type and by
    whether the span's text also occurs in the de-identified dialogue the draft was written from; and planted
    canaries written out verbatim. Counts only: no span text reaches the report."""
    from medllm_pipelines.lib.deidentify.text import build_detector

    started = time.perf_counter()
    detector = build_detector()
    found = detector.detect_many(list(drafts))
    by_type: Counter[str] = Counter()
    copied: Counter[str] = Counter()
    drafts_with = 0
    for draft, dialogue, spans in zip(drafts, dialogues, found, strict=True):
        drafts_with += bool(spans)
        for span in spans:
            by_type[span.label] += 1
            copied[span.label] += draft[span.start:span.end] in dialogue
    canary_hits = sum(any(secret in draft for secret in secrets) for draft in drafts) if secrets else 0
    total = sum(by_type.values())
    summary = {
        "drafts_scanned": len(drafts), "identifier_spans": total, "drafts_with_identifier": drafts_with,
        "spans_not_in_own_dialogue": total - sum(copied.values()),
        "drafts_with_planted_canary": canary_hits if secrets else None,
        "detector": "lib/deidentify/text Detector, validated patterns (no learned tagger)",
        "detector_version": detector.version.get("recognisers"), "sample": sample_note,
        "seconds": round(time.perf_counter() - started, 2),
    }
    rows = tuple((label, count, copied[label], count - copied[label]) for label, count in sorted(by_type.items()))
    text = ("The drafts are written from de-identified dialogues, so any identifier-like span is a report item: "
            "one also found in its own dialogue is copied from the de-identified input (a surrogate, or an "
            "identifier the de-identification missed); one not in its dialogue was produced by the model (memorised "
            "from training or invented). " + ("No identifier-like span was found." if total == 0 else
                                                f"{total} span(s) in {drafts_with} draft(s): review them.")
            + (f" {canary_hits} draft(s) write a planted canary verbatim." if secrets else ""))
    table = Table("Identifier-like spans in the drafts", ("type", "spans", "also in its dialogue",
                                                          "not in its dialogue"), rows)
    return ReportSection("leak_scan", "Leak scan of generated drafts", CLAUSE_PRIVACY, summary=summary,
                         tables=(table,) if rows else (), text=text)


def language_section(stats: np.ndarray, baseline: np.ndarray, languages: np.ndarray,
                     timings: Mapping[str, float] | None = None, drafts_source: str = "") -> ReportSection:
    """Field F1, ICD-10 exact match and ROUGE-L of the test drafts per language, model and baseline."""
    from medllm_pipelines.lib.evaluate.engine import note_metric_set

    rows = []
    summary: dict[str, Any] = {**{key: round(value, 3) for key, value in (timings or {}).items()},
                               "drafts_source": drafts_source}
    for language in LANGUAGES:
        mask = languages == language
        if not mask.any():
            summary[language] = {"n_notes": 0, "reason": "no test note in this language"}
            continue
        model_values = note_metric_set(None, stats[mask]).values
        base_values = note_metric_set(None, baseline[mask]).values
        summary[language] = {"n_notes": int(mask.sum()), **{f"model_{k}": model_values[k] for k in
                                                            ("field_f1", "icd10_exact_match", "rouge_l")},
                             **{f"baseline_{k}": base_values[k] for k in ("field_f1", "icd10_exact_match", "rouge_l")}}
        rows.append((language, int(mask.sum()), *(_round(model_values[k]) for k in
                                                   ("field_f1", "icd10_exact_match", "rouge_l")),
                     *(_round(base_values[k]) for k in ("field_f1", "icd10_exact_match", "rouge_l"))))
    table = Table("Test notes per language", ("language", "notes", "field F1", "ICD-10 exact", "ROUGE-L",
                                              "retrieval field F1", "retrieval ICD-10 exact", "retrieval ROUGE-L"),
                  tuple(rows))
    return ReportSection("notes_by_language", "Generated notes per language", CLAUSE_VALIDATION, summary=summary,
                         tables=(table,), text="Point estimates without intervals (the overall figures carry them); "
                                              "undefined (None) where no note of that language holds an ICD-10 code.")


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


# ----------------------------------------------------------------------------------------------- outputs
def _test_drafts(scorer: Any, model_dir: Path, request: EvaluationRequest, frame: pd.DataFrame,
                 test_rows: np.ndarray) -> tuple[list[str], str]:
    """The drafts of the test rows and where they come from.

    The training keeps its test drafts (``note_runs.write_test_drafts``, tied to the model folder's manifest and the
    dataset version). They are reused only when a seeded sample of them, re-generated here from the registered
    weights, is identical (greedy decoding is deterministic); otherwise, or when there are none, every test draft
    is generated here.
    """
    from medllm_pipelines.lib.train.generative.note_runs import read_test_drafts

    ids = frame[ID_COLUMN].astype(str).to_numpy()
    dialogues, languages = frame["dialogue"].astype(str).to_numpy(), frame["language"].astype(str).to_numpy()
    kept = read_test_drafts(model_dir, request.dataset.version) if isinstance(scorer, _GptScorer) else {}
    if kept and all(ids[i] in kept for i in test_rows):
        count = min(len(test_rows), SPOT_CHECK.get(request.size, SPOT_CHECK[DEMO_SIZE]))
        spot = np.sort(np.random.default_rng(request.seed).choice(test_rows, size=count, replace=False))
        again = scorer.generate_many(dialogues[spot].tolist(), languages[spot].tolist())
        differ = sum(a != kept[ids[i]] for a, i in zip(again, spot, strict=True))
        if differ == 0:
            return ([kept[ids[i]] for i in test_rows],
                    f"the training's test drafts, {count} of {len(test_rows)} (seeded sample) re-generated here "
                    "from the registered weights and identical")
        source = (f"generated here: {differ} of {count} re-generated training drafts differed, so none of the "
                  "training's drafts was used")
    else:
        source = "generated here from the registered weights (the training kept no drafts of this model folder)"
    return scorer.generate_many(dialogues[test_rows].tolist(), languages[test_rows].tolist()), source


def _validation_sample(frame: pd.DataFrame, cap: int | None, seed: int) -> np.ndarray:
    """Indices of the validation rows to generate: all, or a seeded sample of ``cap``."""
    rows = np.flatnonzero((frame["split"] == "validation").to_numpy())
    if cap is None or len(rows) <= cap:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))


def outputs(request: EvaluationRequest) -> ModelOutputs:
    """The registered note generator's drafts, losses and baseline on every note pair, with its privacy sections."""
    from medllm_pipelines.lib.train.generative.note_runs import RetrievalNoteBaseline, read_canary_record
    from medllm_pipelines.lib.train.text.training import cpu_threads

    spec, record = request.spec, request.record
    frame = request.dataset.frame.reset_index(drop=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"spec {spec.id}: the dataset lacks the column(s) {missing}")
    if len(frame) == 0:
        raise ValueError(f"spec {spec.id}: the dataset holds no note pair")
    recorded = record.get("dataset_version")
    if recorded and recorded != request.dataset.version:
        raise ValueError(f"spec {spec.id}: the model was trained on dataset {str(recorded)[:16]}, the evaluation "
                         f"reads {request.dataset.version[:16]}")
    scorer = _load_scorer(record)
    if scorer.dataset_version and scorer.dataset_version != request.dataset.version:
        raise ValueError(f"spec {spec.id}: the model folder was trained on dataset {scorer.dataset_version[:16]}, "
                         f"the evaluation reads {request.dataset.version[:16]}")
    dialogues = frame["dialogue"].astype(str).tolist()
    notes = frame["note"].astype(str).tolist()
    languages = frame["language"].astype(str).to_numpy()
    split = frame["split"].astype(str).to_numpy()
    test_rows = np.flatnonzero(split == "test")
    if len(test_rows) == 0:
        raise ValueError(f"spec {spec.id}: the test split holds no note pair; nothing to evaluate")
    val_cap = VALIDATION_CAP.get(request.size, VALIDATION_CAP[DEMO_SIZE])
    val_rows = _validation_sample(frame, val_cap, request.seed)
    generated_rows = np.concatenate([test_rows, val_rows])

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with cpu_threads(scorer.threads):
        loss = scorer.losses(dialogues, notes, languages.tolist())
        timings["loss_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        test_drafts, drafts_source = _test_drafts(scorer, Path(record["model_dir"]), request, frame, test_rows)
        val_drafts = scorer.generate_many([dialogues[i] for i in val_rows], languages[val_rows].tolist())
        drafts = [*test_drafts, *val_drafts]
        timings["generate_seconds"] = time.perf_counter() - started
    model = np.full((len(frame), len(CASE_COLUMNS[TASK])), np.nan)
    model[generated_rows] = case_stats(drafts, [notes[i] for i in generated_rows], languages[generated_rows])

    train = frame[split == "train"]
    if train.empty:
        raise ValueError(f"spec {spec.id}: the train split holds no note pair; the retrieval baseline needs one")
    retrieval = RetrievalNoteBaseline.fit(train["dialogue"].astype(str).tolist(), train["note"].astype(str).tolist(),
                                          train["language"].astype(str).tolist())
    baseline_rows = np.flatnonzero(split != "train")
    baseline = np.full_like(model, np.nan)
    baseline[baseline_rows] = case_stats(
        retrieval.predict([dialogues[i] for i in baseline_rows], languages[baseline_rows].tolist()),
        [notes[i] for i in baseline_rows], languages[baseline_rows])

    groups = person_groups(frame["patient_pseudonym"], request.tables.get("patients"))
    out_frame = pd.DataFrame({
        "example_id": frame[ID_COLUMN].astype(str), "split": split,
        "patient_pseudonym": frame["patient_pseudonym"].astype(str), "loss": loss,
        "language": languages, "generated": np.isin(np.arange(len(frame)), generated_rows),
    })
    out_frame = pd.concat([out_frame, groups.reset_index(drop=True)], axis=1)

    model_dir = Path(record["model_dir"])
    canary_record = read_canary_record(model_dir) if isinstance(scorer, _GptScorer) else None
    secrets = [str(s) for s in canary_record["secrets"]] if canary_record else []
    scan_cap = LEAK_SCAN_CAP.get(request.size, LEAK_SCAN_CAP[DEMO_SIZE])
    scanned = np.arange(len(drafts))
    if len(scanned) > scan_cap:
        scanned = np.sort(np.random.default_rng(request.seed).choice(scanned, size=scan_cap, replace=False))
    sample_note = (f"{len(scanned)} of {len(drafts)} drafts (test notes and {len(val_rows)} validation notes"
                   + (f", a seeded sample of {scan_cap}" if len(drafts) > scan_cap else "") + ")")
    with cpu_threads(scorer.threads):
        canary = canary_section(scorer, model_dir, size=request.size, seed=request.seed)
    test_mask = split == "test"
    sections = (
        language_section(model[test_mask], baseline[test_mask], languages[test_mask],
                         {**timings, "drafts_scored": len(drafts)}, drafts_source),
        canary,
        leak_scan_section([drafts[i] for i in scanned], [dialogues[generated_rows[i]] for i in scanned], secrets,
                          sample_note=sample_note),
    )
    n_val = int((split == "validation").sum())
    limits = [
        f"Drafts are scored for the {len(test_rows)} test notes ({drafts_source}) and {len(val_rows)} of {n_val} "
        "validation notes (seeded sample); training notes are not drafted, so nothing is reported about the drafts "
        "of notes the model was trained on.",
        "Field scores compare normalised strings item by item: a clinically equivalent paraphrase counts as wrong, "
        "and a correct item under the wrong header as a false positive and a false negative.",
        "The gold notes are synthetic (the synthetic hospital's signed notes); no clinician rated the drafts, so "
        "clinical safety of a draft (an omitted allergy, a wrong dose) is not measured beyond field matching.",
        "The leak scan uses the de-identifier's validated patterns only (the learned tagger lives in the raw zone); "
        "names without a cue can be missed, and a surrogate copied from the de-identified dialogue is counted too.",
        "Membership inference reads the teacher-forced loss of the gold note; an attacker who can only sample drafts "
        "sees less, one with the weights sees as much.",
    ]
    if canary_record is None:
        limits.append("No canaries were planted in this model's training: its memorisation of rare strings "
                      "(canary exposure) is undefined, not zero.")
    else:
        limits.append(f"Canary exposure is ranked among {canary.summary.get('candidates'):,} sampled secrets, so it "
                      f"can show at most {canary.summary.get('max_measurable_exposure_bits'):.1f} of the "
                      f"{canary.summary.get('max_possible_exposure_bits'):.1f} bits a fully memorised canary has; "
                      "the canaries sit in the History field, where a real secret could too.")
    return ModelOutputs(
        task=TASK,
        frame=out_frame,
        y_true=np.zeros(len(frame)),
        model=model,
        model_name=str(record.get("registered_model") or spec.id),
        model_version=str(record.get("registered_version") or "unregistered"),
        baseline=baseline,
        baseline_name=f"{spec.baseline} (TF-IDF character 1-3-gram nearest train note)",
        sections=sections,
        gate_values={},
        limits=tuple(limits),
        threshold_note="no decision threshold: generated notes are scored field by field",
    )
