"""The models the service serves: the ``champion`` of each registered model, loaded, warmed and swapped live.

Row P1 (packaging) and P3 (rolling updates). At start the manager resolves each model's alias in the MLflow
registry, finds the version's model folder (the model store's training record; on a host without the store,
the folder the run logged to MLflow), loads it with the family's predictor (no Lightning, no MLflow at request
time) and warms it with one inference before the service reports ready. A background thread re-reads the
aliases every ``MEDLLM_SERVE_MODEL_REFRESH_S`` seconds: a changed alias loads the new version beside the old one,
warms it, then swaps the reference, so requests in flight finish on the old version and none waits for a load.

A packaged model folder (``medllm models package``: the model folder, ``package.json`` with name, version,
dependencies and file hashes) loads the same way in a fresh process without the registry
(``MEDLLM_SERVE_MODELS_DIR``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medllm_pipelines.lib.train.store import ModelStore

__all__ = ["SERVED_MODELS", "LoadedModel", "ModelManager", "load_predictor", "package_model"]

LOG = logging.getLogger("medllm.serving.models")

# registered model name -> predictor kind
SERVED_MODELS: dict[str, str] = {
    "t2d_risk": "tabular",
    "triage": "text_classifier",
    "note_generator": "note_generator",
    "lesion_classifier": "imaging",
    "lesion_segmentation": "imaging",
}
PACKAGE_FILE = "package.json"
PACKAGE_FORMAT = "medllm-model-package"


def load_predictor(kind: str, model_dir: Path) -> Any:
    """The family's predictor for ``model_dir`` (each checks its weights against their recorded SHA-256)."""
    if kind == "tabular":
        from medllm_pipelines.lib.train.predictor import TabularPredictor

        return TabularPredictor.load(model_dir)
    if kind == "text_classifier":
        from medllm_pipelines.lib.train.text.predictor import TextClassifierPredictor

        return TextClassifierPredictor.load(model_dir)
    if kind == "note_generator":
        from medllm_pipelines.lib.train.generative.note_predictor import NoteGeneratorPredictor

        return NoteGeneratorPredictor.load(model_dir)
    if kind == "imaging":
        from medllm_pipelines.lib.train.imaging.predictor import ImagingPredictor

        return ImagingPredictor.load(model_dir)
    raise ValueError(f"unknown predictor kind {kind!r}")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    source: str  # registry | package
    model_dir: str
    predictor: Any
    loaded_at: str
    load_seconds: float

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "alias": self.alias, "source": self.source}


@dataclass
class _Slot:
    current: LoadedModel | None = None
    problem: str | None = None  # why nothing (or not the newest alias target) is served
    loading: str | None = None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_model(name: str, version: str, model_dir: Path, out_dir: Path, *, family: str,
                  dataset_version: str, requirements: list[str]) -> Path:
    """Copy ``model_dir`` into ``out_dir/name`` with ``package.json``: what a fresh process needs to serve it."""
    target = out_dir / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_dir, target)
    files = {str(p.relative_to(target)): _sha256(p) for p in sorted(target.rglob("*")) if p.is_file()}
    manifest = {"format": PACKAGE_FORMAT, "format_version": 1, "name": name, "version": str(version),
                "kind": SERVED_MODELS.get(name, family), "family": family, "dataset_version": dataset_version,
                "requirements": requirements, "sha256": files,
                "packaged_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    (target / PACKAGE_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return target


def read_package(folder: Path) -> dict[str, Any]:
    """The package manifest, with every file checked against its recorded hash."""
    manifest = json.loads((folder / PACKAGE_FILE).read_text())
    if manifest.get("format") != PACKAGE_FORMAT:
        raise ValueError(f"{folder} is not a medllm model package")
    for rel, digest in manifest["sha256"].items():
        if _sha256(folder / rel) != digest:
            raise ValueError(f"{folder / rel} does not match its hash in {PACKAGE_FILE}")
    return manifest


class ModelManager:
    """Which version of each served model is live; thread-safe reads, background refresh."""

    def __init__(self, *, tracking_uri: str | None, store_root: Path | None, alias: str = "champion",
                 packaged_dir: Path | None = None, names: Mapping[str, str] | None = None,
                 warm: Callable[[str, Any], None] | None = None,
                 on_change: Callable[[LoadedModel | None, LoadedModel], None] | None = None) -> None:
        """``warm(name, predictor)`` runs on a loaded version before it serves; ``on_change(old, new)`` after a
        swap (the service rebuilds that scenario's objects there, off the request path)."""
        self.tracking_uri, self.alias = tracking_uri, alias
        self.store = ModelStore(store_root) if store_root else None
        self.packaged_dir = packaged_dir
        self.names = dict(names or SERVED_MODELS)
        self._warm, self._on_change = warm, on_change
        self._slots = {name: _Slot() for name in self.names}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshed_at: float | None = None

    def set_on_change(self, on_change: Callable[[LoadedModel | None, LoadedModel], None]) -> None:
        self._on_change = on_change

    # -- reads -------------------------------------------------------------------------------------
    def get(self, name: str) -> LoadedModel | None:
        slot = self._slots.get(name)
        return slot.current if slot else None

    def describe(self, name: str) -> dict[str, str] | None:
        loaded = self.get(name)
        return loaded.describe() if loaded else None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, slot in self._slots.items():
            current = slot.current
            out[name] = {"served": current.describe() if current else None,
                         "problem": slot.problem, "loading": slot.loading}
        return out

    # -- refresh -----------------------------------------------------------------------------------
    def refresh(self) -> dict[str, Any]:
        """Resolve every alias (or package) and load what changed; never raises (problems are per model)."""
        targets = self._package_targets() if self.packaged_dir else self._registry_targets()
        for name in self.names:
            target = targets.get(name)
            slot = self._slots[name]
            if isinstance(target, str):  # nothing (new) to load: the last good version, if any, keeps serving
                slot.problem = target
                continue
            version, model_dir, source = target
            if slot.current is not None and slot.current.version == version and slot.current.source == source:
                slot.problem = None
                continue
            slot.loading = version
            try:
                loaded = self._load(name, version, model_dir, source)
            except Exception as exc:  # a broken version never replaces a working one
                slot.problem = f"version {version} could not be loaded: {type(exc).__name__}: {str(exc)[:200]}"
                LOG.error("model %s v%s failed to load: %s", name, version, type(exc).__name__)
            else:
                previous = slot.current
                with self._lock:
                    slot.current, slot.problem = loaded, None
                LOG.info("serving %s v%s (%s, loaded and warmed in %.2fs)", name, version, source,
                         loaded.load_seconds)
                if self._on_change:
                    try:
                        self._on_change(previous, loaded)
                    except Exception as exc:
                        LOG.error("after serving %s v%s: %s", name, version, type(exc).__name__)
            finally:
                slot.loading = None
        self.refreshed_at = time.time()
        return self.status()

    def start(self, interval_s: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="medllm-model-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- internals ---------------------------------------------------------------------------------
    def _load(self, name: str, version: str, model_dir: Path, source: str) -> LoadedModel:
        started = time.perf_counter()
        predictor = load_predictor(self.names[name], model_dir)
        if self._warm is not None:
            self._warm(name, predictor)
        return LoadedModel(name, version, self.alias if source == "registry" else "package", source,
                           str(model_dir), predictor, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           time.perf_counter() - started)

    def _package_targets(self) -> dict[str, tuple[str, Path, str] | str]:
        targets: dict[str, tuple[str, Path, str] | str] = {}
        assert self.packaged_dir is not None
        for name in self.names:
            folder = self.packaged_dir / name
            if not (folder / PACKAGE_FILE).is_file():
                targets[name] = f"no package for {name} under the packaged models folder"
                continue
            try:
                manifest = read_package(folder)
            except (ValueError, OSError, KeyError) as exc:
                targets[name] = f"package refused: {exc}"
                continue
            targets[name] = (str(manifest["version"]), folder, "package")
        return targets

    def _registry_targets(self) -> dict[str, tuple[str, Path, str] | str]:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        targets: dict[str, tuple[str, Path, str] | str] = {}
        try:
            client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        except Exception as exc:
            return {name: f"the model registry is unavailable: {type(exc).__name__}" for name in self.names}
        records = self.store.all_training_records() if self.store else []
        for name in self.names:
            try:
                version = client.get_model_version_by_alias(name, self.alias)
            except MlflowException:
                targets[name] = (f"no version of {name} holds the {self.alias!r} alias (its promotion gate has not "
                                 f"passed); `medllm models` shows why")
                continue
            except Exception as exc:
                targets[name] = f"the model registry is unavailable: {type(exc).__name__}"
                continue
            folder = self.model_folder(name, str(version.version), version.run_id, records)
            targets[name] = (str(version.version), folder, "registry") if isinstance(folder, Path) else folder
        return targets

    def model_folder(self, name: str, version: str, run_id: str | None,
                     records: list[dict[str, Any]] | None = None) -> Path | str:
        """The version's model folder, or why none was found."""
        if records is None:
            records = self.store.all_training_records() if self.store else []
        for record in records:
            if str(record.get("registered_model")) == name and str(record.get("registered_version")) == version:
                folder = Path(str(record.get("model_dir", "")))
                if folder.is_dir():
                    return folder
        if run_id:
            try:
                import mlflow

                from medllm_pipelines.lib.train.tracking import MODEL_DIR_ARTIFACT_PATH

                return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_DIR_ARTIFACT_PATH,
                                                                tracking_uri=self.tracking_uri))
            except Exception:
                pass
        return f"{name} v{version}: its model folder is neither in the model store nor logged with its run"


