"""AI pre-consultation (clause 6.2.1, row A1): symptoms in, department and advice out, red flags escalated first.

The knowledge (departments, symptom synonyms with ICD-10 codes, the disease graph and the red-flag rules) is
versioned YAML in this package, read by ``knowledge.py``; ``engine.py`` runs the dialogue over it and the
triage model.
"""

from __future__ import annotations

from medllm_pipelines.lib.scenarios.triage.engine import TriageConfig, TriageEngine, TurnResult
from medllm_pipelines.lib.scenarios.triage.knowledge import KnowledgeGraph, load_knowledge

__all__ = ["KnowledgeGraph", "TriageConfig", "TriageEngine", "TurnResult", "load_knowledge"]
