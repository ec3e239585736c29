"""``medllm deidentify-text``: the production free-text de-identifier over a JSON-lines file.

Input lines ``{"id", "text", "language"?, "patient"?}``; output lines
``{"id", "text", "spans": [{"start", "end", "label"}]}`` with offsets into the
*input* text. Detection is the validated patterns plus, when the platform's
Vault is reachable and a ``phi_tagger`` run left a model in the raw zone, that
tagger (else patterns only, said on stderr). Replacement: with Vault, keyed
surrogates consistent per ``patient`` (or per line when absent) with the
patient's date shift; without Vault, typed placeholders ([NAME], [DATE]...),
said on stderr; with ``--spans-only`` the text is returned unchanged and no
key is needed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

__all__ = ["deidentify_text_command", "register"]

BATCH = 64


def _stderr(message: str) -> None:
    click.echo(message, err=True)


def _vault(settings: Any) -> Any | None:
    """The platform's Vault when it answers and is unsealed, else None (never raises)."""
    try:
        from medllm_pipelines.defs.resources import vault_resource

        extra: dict[str, Any] = {} if settings.uses_local_openbao else {"timeout": 5.0}
        if settings.uses_local_openbao and not Path(settings.openbao_state_file).exists():
            return None
        vault = vault_resource(settings, **extra)
        health = vault.health()
        return None if health.get("sealed") else vault
    except Exception:  # noqa: BLE001 - no Vault is a normal state for this command
        return None


def _tagger(settings: Any, vault: Any) -> Any | None:
    """The tagger of the last ``phi_tagger`` run (encrypted in the raw zone), or None."""
    try:
        from medllm_pipelines.defs.deidentify.text import load_phi_tagger
        from medllm_pipelines.resources.raw_zone import RawZoneResource

        zone = RawZoneResource(path=str(settings.raw_zone_dir), vault=vault,
                               audit_log=str(settings.audit_log_file)).get()
        return load_phi_tagger(zone)
    except Exception:  # noqa: BLE001 - no model yet: patterns only
        return None


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"line {number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise click.ClickException(f"line {number}: expected an object with a string 'text'")
            yield number, record


def _surrogates_for(vault: Any, scopes: list[str]) -> dict[str, Any]:
    from medllm_pipelines.lib.deidentify.text.silver import patient_surrogates

    return patient_surrogates(scopes, vault.hmac_many)


@click.command("deidentify-text")
@click.option("--in", "in_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help='JSON lines {"id", "text", "language"?, "patient"?}')
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help='JSON lines {"id", "text", "spans"}')
@click.option("--spans-only", is_flag=True, help="return the spans and the text unchanged (no Vault needed)")
def deidentify_text_command(in_file: Path, out_file: Path, spans_only: bool) -> None:
    """De-identify free text (notes, dialogues) in Chinese and English."""
    from medllm_pipelines.lib.deidentify.text import build_detector, placeholder, replace_spans
    from medllm_pipelines.settings import load_settings

    settings = load_settings()
    vault = _vault(settings)
    tagger = _tagger(settings, vault) if vault is not None else None
    detector = build_detector(tagger=tagger)
    if tagger is None:
        _stderr("deidentify-text: patterns only (no phi_tagger model found under MEDLLM_HOME"
                + (")" if vault is not None else ", Vault not reachable)"))
    else:
        _stderr(f"deidentify-text: patterns + tagger {tagger.digest[:12]}")
    if not spans_only and vault is None:
        _stderr("deidentify-text: no Vault: identifiers replaced by typed placeholders ([NAME], [DATE], ...)")
    records = [record for _, record in _records(in_file)]
    written = 0
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("w", encoding="utf-8") as out:
        for begin in range(0, len(records), BATCH):
            batch = records[begin:begin + BATCH]
            texts = [r["text"] for r in batch]
            found = detector.detect_many(texts)
            # surrogates are consistent per patient (or per line when the line names none)
            scopes = [str(r.get("patient") or r.get("id") or begin + i) for i, r in enumerate(batch)]
            surrogates = _surrogates_for(vault, scopes) if not spans_only and vault is not None else {}
            for record, text, spans, scope in zip(batch, texts, found, scopes, strict=True):
                if spans_only:
                    clean = text
                elif vault is None:
                    clean = replace_spans(text, spans, placeholder)
                else:
                    clean = replace_spans(text, spans, surrogates[scope])
                row = {"id": record.get("id"), "text": clean,
                       "spans": [{"start": s.start, "end": s.end, "label": s.label} for s in spans]}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
    _stderr(f"deidentify-text: {written} records written to {out_file}")


def register(main: click.Group) -> None:
    """Add ``deidentify-text`` to ``medllm``."""
    main.add_command(deidentify_text_command)


if __name__ == "__main__":  # pragma: no cover
    deidentify_text_command(sys.argv[1:])
