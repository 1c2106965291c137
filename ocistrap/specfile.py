"""TOML spec files: their JSON Schema, made from the settings table, and reading one with clear errors."""

import difflib
import json
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema

from ocistrap import schema
from ocistrap.errors import OcistrapError, UsageError
from ocistrap.settingtable import KEYS, SETTINGS, SPEC_COMMANDS, _json_default

# ---- spec files ----

def spec_schema() -> dict[str, Any]:
    """The JSON Schema of spec files, as committed in specs/spec.schema.json."""
    properties: dict[str, Any] = {}
    for key in KEYS:
        settings = [s for s in SETTINGS if s.key == key and set(s.commands) & set(SPEC_COMMANDS)]
        if not settings:
            continue
        properties[key] = settings[0].file_schema()
        defaults = {json.dumps(_json_default(s.default)) for s in settings}
        if len(defaults) == 1 and settings[0].default is not None and not settings[0].default_text:
            properties[key]["default"] = _json_default(settings[0].default)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ocistrap.dev/specs/spec.schema.json",
        "title": "ocistrap spec file",
        "description": "Settings of `ocistrap lock -f` and `ocistrap build -f` (TOML). Every key is "
                       "optional; the command line overrides the file. Relative paths are relative "
                       "to the spec file. Generated from ocistrap/settings.py.",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def spec_schema_text() -> str:
    return json.dumps(spec_schema(), indent=2) + "\n"


def read_spec(path: Path) -> dict[str, Any]:
    """The settings written in the spec file PATH, checked against its schema before any is used."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read the spec file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    found = problems(document)
    if found:
        raise UsageError(f"{path}: " + "; ".join(found),
                         hint="the keys and their types are in specs/spec.schema.json")
    setting = {s.key: s for s in reversed(SETTINGS)}
    values = {}
    for key, value in document.items():
        try:
            values[key] = setting[key].kind.from_file(value, path.parent)
        except OcistrapError as e:
            raise UsageError(f"{path}: key {key!r}: {e.message}", hint=e.hint) from None
    return values


def problems(document: Any) -> list[str]:
    """What is wrong with a parsed spec file, one phrase each, in the order of the keys."""
    errors = sorted(schema.validator("spec").iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    return [phrase for error in errors for phrase in _explain(error)]


def _explain(error: jsonschema.ValidationError) -> list[str]:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        return [f"unknown key {_dotted([*error.absolute_path, k])!r}{_did_you_mean(k, known, top=not where)}"
                for k in error.instance if k not in known]
    if error.validator == "required":
        return [f"key {_dotted([*error.absolute_path, k])!r} is missing"
                for k in error.validator_value if k not in error.instance]
    return [f"key {where!r}: expected {_expected(error)}, not {_toml(error.instance)}"]


def _expected(error: jsonschema.ValidationError) -> str:
    rule, value = error.validator, error.validator_value
    if rule == "type":
        return _type_words(error.schema)
    if rule == "enum":
        return "one of " + ", ".join(_toml(v) for v in value)
    if rule == "minLength":
        return "a non-empty string"
    if rule == "minItems":
        return f"at least {value} item" + ("s" if value != 1 else "")
    if rule == "pattern":
        return error.schema.get("description", f"text matching {value}")
    return error.message


def _type_words(fragment: Mapping[str, Any]) -> str:
    kind = fragment.get("type")
    if kind == "array":
        items = _type_words(fragment.get("items", {}))
        return "an array of " + {"a string": "strings", "a table": "tables"}.get(items, items)
    if kind == "object":
        return "a table of strings" if fragment.get("additionalProperties") == {"type": "string"} else "a table"
    return {"string": "a string", "boolean": "true or false"}.get(kind, str(kind))


def _did_you_mean(key: str, known: list[str], *, top: bool) -> str:
    names = {k: k for k in known}
    if top:
        names.update((flag.lstrip("-").replace("-", "_"), s.key)
                     for s in SETTINGS for flag in s.option_flags() if flag.startswith("--"))
    if key in names:
        return f" (did you mean {names[key]!r}?)"
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


if __name__ == "__main__":
    sys.stdout.write(spec_schema_text())
