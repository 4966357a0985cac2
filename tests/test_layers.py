"""The package's layers, enforced: no import reaches up a layer, and no import circle.

Layers, from the ground up (see the README's layout section). A module may
import modules of its own layer or of layers below it, never above; and the
graph of runtime imports between modules has no cycle. Imports under
``if TYPE_CHECKING:`` are not runtime imports and are left out.

The study's own declarations (its data contract, the synthetic cohort's knobs,
the privacy section) live beside the code they describe but belong to the
ground: ``study.py`` is made of them, so they may import only ``config`` and
``errors``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lhs_federated"

LAYERS = [
    ("errors", "config"),
    ("data.contract", "data.synthetic", "data.omop.definition", "privacy.spec"),
    ("study", "site_config"),
    ("results",),
    ("data",),
    ("learning",),
    ("privacy",),
    ("governance",),
    ("registry",),
    ("apps",),
    ("research",),
    ("loop",),
    ("deploy",),
    ("dashboard",),
    ("cli", "__main__"),
]
# The package root re-exports the public API lazily: it is the top of the house.
TOP = ""

FLOWER_ROOMS = ("apps", "deploy", "cli", "dashboard")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    if module == TOP:
        return len(LAYERS)
    best, best_len = None, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    if best is None:
        raise AssertionError(f"module lhs_federated.{module} is in no layer: add it to LAYERS")
    return best


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    return skipped


def _imports(path: Path, modules: dict[str, Path]) -> dict[str, set[str]]:
    """Runtime imports of one module: imported module -> imported names ('' for the module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lhs_federated" or node.module.startswith("lhs_federated."):
                base = node.module.removeprefix("lhs_federated").lstrip(".")
                for alias in node.names:
                    sub = f"{base}.{alias.name}".lstrip(".")
                    target = sub if sub in modules else base
                    found.setdefault(target, set()).add(alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lhs_federated"):
                    found.setdefault(alias.name.removeprefix("lhs_federated").lstrip("."), set())
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target in _imports(path, modules) if target != name}
        for name, path in modules.items()
    }


def test_every_module_is_in_a_layer() -> None:
    for module in _modules():
        _layer(module)


def test_no_import_reaches_up_a_layer() -> None:
    upward = [
        f"lhs_federated.{module} (layer {_layer(module)}) imports "
        f"lhs_federated.{target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_flower_only_in_its_rooms() -> None:
    outside = []
    for module, path in _modules().items():
        if module.split(".")[0] in FLOWER_ROOMS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(n == "flwr" or n.startswith("flwr.") for n in names):
                outside.append(f"lhs_federated.{module}")
    assert not outside, f"Flower imported outside {FLOWER_ROOMS}: {sorted(set(outside))}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk itself works: a made-up upward import is found."""
    source = tmp_path / "fake.py"
    source.write_text("from lhs_federated.apps.federation import run_study\n", encoding="utf-8")
    found = _imports(source, _modules())
    assert "apps.federation" in found
    assert _layer("apps.federation") > _layer("learning.metrics")
