"""The one error a scenario raises for bad input: the service turns it into an RFC 9457 problem with its reason."""

from __future__ import annotations

__all__ = ["ScenarioInputError"]


class ScenarioInputError(ValueError):
    """Bad input the service answers with a 4xx problem; ``reason`` is a stable machine-readable code.

    ``detail`` is shown to the caller and written to the audit log, so it never quotes the input (it may hold PHI).
    """

    def __init__(self, reason: str, detail: str, *, status: int = 422) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
