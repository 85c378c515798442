"""Load a job spec: ``jobs/specs/defaults.yaml`` <- run spec <- dotted ``key=value`` overrides.

CLI: ``python -m ctvlp.config --spec PATH [key=value ...]`` prints the resolved spec as YAML, or
the errors with exit status 2.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ctvlp.config.schema import JobSpec, SpecError

DEFAULTS_PATH = Path(__file__).resolve().parents[3] / "jobs" / "specs" / "defaults.yaml"

def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"phases.phase2.lr=3e-4"`` -> (["phases", "phase2", "lr"], 3e-4); values parse as YAML."""
    if "=" not in text:
        raise SpecError(f"override {text!r} is not of the form key=value (e.g. phases.phase2.lr=3e-4)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"override {text!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        shown = "<not shown>" if looks_secret(key) else repr(raw)
        raise SpecError(f"override {key}: value {shown} is not valid YAML") from None
    return parts, value


def _apply_override(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise SpecError(f"override {'.'.join(parts)}: {part!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"spec file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec file {str(p)!r} must hold a mapping at the top level")
    return data


# Key names whose values are never echoed in an error (a secret pasted into a spec or override).
_SECRET_NAME = re.compile(
    r"secret|passw|credential|private_?key|api_?key|access_?key|(^|[._])(auth_|session_|access_|bearer_)?token$",
    re.I)


def looks_secret(key: str) -> bool:
    """True when a (dotted) key's name suggests its value is a credential."""
    return bool(_SECRET_NAME.search(key))


def format_errors(err: ValidationError) -> str:
    """One line per problem: ``- dotted.key: message (got value)``; values of keys that look
    secret (:func:`looks_secret`) are never shown."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "literal[")))
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        if looks_secret(loc):
            shown = " (value not shown: the key looks like a credential; credentials never go in a spec)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key: not a field of this section"
        lines.append(f"- {loc or '<root>'}: {msg}{shown}")
    return "\n".join(lines)


def spec_from_dict(data: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError("invalid job spec:\n" + format_errors(err)) from None


def load_spec(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """defaults.yaml <- run spec at ``path`` <- dotted overrides; validated. Raises SpecError."""
    tree = _read_yaml(DEFAULTS_PATH) if DEFAULTS_PATH.is_file() else {}
    if path is not None:
        tree = _deep_merge(tree, _read_yaml(path))
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(tree, parts, value)
    return spec_from_dict(tree)


def resolved_dict(spec: JobSpec) -> dict:
    """The spec with presets filled in and M recorded (for humans; M is never read back)."""
    data = spec.model_dump(mode="json")
    data["data"]["grouping"] = spec.data.grouping_table
    data["data"]["anatomies"] = spec.data.anatomies  # derived; not a settable field
    return data


def to_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(resolved_dict(spec), sort_keys=False, width=100, default_flow_style=None)


def settable_dict(spec: JobSpec) -> dict:
    """The spec as a dict that ``spec_from_dict`` accepts again (round-trips exactly)."""
    return spec.model_dump(mode="json")


def spec_hash(spec: JobSpec, length: int = 10) -> str:
    """Stable short hash of the settable spec (run names that are stable for a spec)."""
    blob = json.dumps(settable_dict(spec), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def write_resolved(spec: JobSpec, out_dir: str | Path, name: str = "resolved_spec.yaml") -> Path:
    """Write the settable spec (loadable with ``load_spec``) beside an output; returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(yaml.safe_dump(settable_dict(spec), sort_keys=False, width=100, default_flow_style=None))
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ctvlp.config", description="Print the resolved job spec.")
    ap.add_argument("--spec", default=None, help="run spec YAML (merged over jobs/specs/defaults.yaml)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.overrides)
    except SpecError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(to_yaml(spec), end="")
    return 0

