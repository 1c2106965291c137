"""Validate documents against the JSON Schemas shipped in ``specs/``.

The schemas refer to each other by ``$id`` (the OCI ones share oci-defs.schema.json,
where descriptor, digest, platform and annotations are defined once); one
``referencing`` registry holds them all, so no schema keeps a copy of another's part.
"""

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from referencing import Registry, Resource

from ocistrap.errors import OcistrapError


class SchemaError(OcistrapError):
    """A document does not match its schema."""


@cache
def load(name: str) -> dict[str, Any]:
    """Return the schema ``specs/NAME.schema.json``."""
    text = resources.files("ocistrap.specs").joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


@cache
def registry() -> Registry:
    """Every schema of ``specs/``, by its ``$id``."""
    names = sorted(p.name.removesuffix(".schema.json") for p in resources.files("ocistrap.specs").iterdir()
                   if p.name.endswith(".schema.json"))
    return Registry().with_resources((load(n)["$id"], Resource.from_contents(load(n))) for n in names)


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for the schema NAME that resolves references to the other schemas."""
    return jsonschema.Draft202012Validator(load(name), registry=registry())


def validate(document: Any, name: str, *, what: str) -> None:
    """Raise SchemaError naming WHAT and the first offending path if DOCUMENT is invalid."""
    error = jsonschema.exceptions.best_match(validator(name).iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SchemaError(f"{what}: invalid at {where}: {error.message}")
