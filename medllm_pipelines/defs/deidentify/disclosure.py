"""Disclosure risk: k-anonymity gates on released tables and differentially private released statistics."""

ASSETS: list = []
CHECKS: list = []
