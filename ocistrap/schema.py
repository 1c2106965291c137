"""Validate documents against the JSON Schemas shipped in ``specs/``."""

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from ocistrap.errors import OcistrapError


class SchemaError(OcistrapError):
    """A document does not match its schema."""


@cache
def load(name: str) -> dict[str, Any]:
    """Return the schema ``specs/NAME.schema.json``."""
    text = resources.files("ocistrap.specs").joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


def validate(document: Any, name: str, *, what: str) -> None:
    """Raise SchemaError naming WHAT and the first offending path if DOCUMENT is invalid."""
    validator = jsonschema.Draft202012Validator(load(name))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SchemaError(f"{what}: invalid at {where}: {error.message}")
