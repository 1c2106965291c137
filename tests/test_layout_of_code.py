"""The package layout the README describes: each layer imports only from layers before it,
and every ``__init__.py`` of a subpackage only marks its package."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ocistrap"
BASE = {"errors", "log", "http", "schema", "hostarch", "__version__"}
LAYERS = {"debian": 1, "rootfs": 2, "oci": 3, "transports": 4}
COMMANDS = 5


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return 0
    return LAYERS.get(parts[1], COMMANDS)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imported(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ocistrap"):
            found.update(f"{node.module}.{a.name}" if node.module == "ocistrap" else node.module for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ocistrap"))
    return found


def test_rank_of_a_module() -> None:
    assert [rank(m) for m in ("ocistrap.errors", "ocistrap.debian.lock", "ocistrap.rootfs.spawn",
                             "ocistrap.oci.image", "ocistrap.transports.registry.api", "ocistrap.cli")] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_imports_one_of_a_later_layer(path: Path) -> None:
    module = module_name(path)
    upward = sorted(m for m in imported(ast.parse(path.read_text())) if rank(m) > rank(module))
    assert not upward, f"{module} (layer {rank(module)}) imports {upward}"


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE
                                         and p.parent.name != "transports"), ids=lambda p: module_name(p))
def test_subpackage_init_only_marks_the_package(path: Path) -> None:
    body = ast.parse(path.read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


def stranded_docstrings(source: str) -> list[int]:
    """Lines of module-level strings that neither open the module nor sit right under an assignment."""
    body = ast.parse(source).body
    return [node.lineno for before, node in zip(body, body[1:])
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            and not (isinstance(before, (ast.Assign, ast.AnnAssign)) and before.end_lineno == node.lineno - 1)]


def test_a_stranded_docstring_is_found() -> None:
    assert stranded_docstrings('"""m"""\nA = 1\n"""a"""\n\n\n"""lost"""\nB = 2\n') == [6]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_constants_keep_their_docstrings(path: Path) -> None:
    assert not stranded_docstrings(path.read_text()), "a docstring no longer under the constant it describes"
