"""The JSON an LLM report parser must return, validated with pydantic.

``{"<anatomy>": {"abnormal": bool, "uncertain": bool, "text": str}, ...}`` with exactly the requested
anatomies; ``uncertain`` (only hedged findings) may be left out and then means false.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, RootModel, StrictBool, field_validator


class AnatomyFinding(BaseModel):
    """One anatomy's verdict: ``abnormal`` (a stated abnormality), ``uncertain`` (only hedged ones:
    "possible", "cannot be excluded") and its report text."""

    model_config = ConfigDict(extra="forbid")
    abnormal: StrictBool
    uncertain: StrictBool = False
    text: str

    @field_validator("text")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()


class ReportFindings(RootModel[dict[str, AnatomyFinding]]):
    """``{anatomy: AnatomyFinding}``; :func:`validate_for` also checks the key set."""


def validate_for(data: object, anatomies: list[str]) -> dict[str, AnatomyFinding]:
    """Validate parsed JSON against the schema and the expected anatomies.

    Raises:
        pydantic.ValidationError: wrong types or fields; ValueError: missing or unknown anatomies.
    """
    parsed = ReportFindings.model_validate(data).root
    missing = [a for a in anatomies if a not in parsed]
    extra = [k for k in parsed if k not in anatomies]
    if missing or extra:
        raise ValueError(f"anatomy keys differ: missing {missing}, unexpected {extra}")
    return parsed
