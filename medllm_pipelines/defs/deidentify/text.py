"""Free-text de-identification: the PHI tagger, de-identified notes and dialogues."""

ASSETS: list = []
CHECKS: list = []
