"""The package's import contracts (docs/architecture.md): imports go down only, no circles, no
private names across modules, frameworks only in their adapters, benchmarks and tests apart.

Read from the source with ``ast`` (nothing is imported), so a violation names file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "rws_hub"

# Sub-packages by layer: a module may import its own sub-package and any lower layer.
LAYERS: dict[str, int] = {
    "errors": 0,
    "core": 1,
    "archs": 2,
    "datasets": 2,
    "io": 3,
    "detect": 4,
    "zoo": 5,
    "inference": 6,
    "launch": 7,
    "integrations": 8,
    "cli": 9,
}
FRAMEWORKS = ("ts", "gradio", "gradio_client")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports(path: Path) -> Iterator[tuple[ast.AST, str, list[str], bool]]:
    """``(node, module imported, names imported, inside a function)`` for every import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]

    def walk(node: ast.AST, local: bool) -> Iterator[tuple[ast.AST, str, list[str], bool]]:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield child, a.name, [], local
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                yield child, base, [a.name for a in child.names], local
            yield from walk(child, inner)

    yield from walk(tree, False)


def subpackage(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "rws_hub" else None


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO_ROOT)}:{getattr(node, 'lineno', '?')}"


def test_every_subpackage_has_a_layer() -> None:
    found = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert found <= set(LAYERS), f"give these a layer in LAYERS: {sorted(found - set(LAYERS))}"


def test_imports_go_down_only() -> None:
    bad = []
    for path in package_modules():
        me = subpackage(module_name(path))
        if me is None:  # rws_hub/__init__.py: the facade may re-export anything
            continue
        for node, target, _, _ in imports(path):
            if target == "rws_hub":
                bad.append(f"{where(path, node)} imports the rws_hub facade; import the module")
                continue
            them = subpackage(target)
            if them is None or them == me:
                continue
            if LAYERS[them] >= LAYERS[me]:
                bad.append(f"{where(path, node)}: {me} (layer {LAYERS[me]}) imports {target}")
    assert not bad, "\n".join(bad)


def test_core_needs_only_errors() -> None:
    for path in (PACKAGE / "core").rglob("*.py"):
        for node, target, _, _ in imports(path):
            them = subpackage(target)
            assert them in (None, "core", "errors") or not target.startswith("rws_hub"), where(
                path, node
            )


def test_frameworks_only_in_integrations() -> None:
    bad = []
    for path in package_modules():
        if subpackage(module_name(path)) == "integrations" and path.name != "__init__.py":
            continue
        for node, target, _, _ in imports(path):
            if target.split(".")[0] in FRAMEWORKS:
                bad.append(f"{where(path, node)} imports {target}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_cli() -> None:
    for path in package_modules():
        if subpackage(module_name(path)) == "cli":
            continue
        for node, target, _, _ in imports(path):
            assert subpackage(target) != "cli", where(path, node)


def test_no_private_names_across_modules() -> None:
    bad = []
    for path in package_modules():
        me = module_name(path)
        for node, target, names, _ in imports(path):
            if not target.startswith("rws_hub") or target == me:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private or any(part.startswith("_") for part in target.split(".")[1:]):
                bad.append(f"{where(path, node)}: {target} {private}")
    assert not bad, "\n".join(bad)


def test_no_function_local_package_imports_below_the_adapters() -> None:
    """Lazy imports are allowed in the CLI (start-up time) and the adapters only; elsewhere an
    import inside a function would hide the order (or dodge a circle)."""
    bad = []
    for path in package_modules():
        if subpackage(module_name(path)) in ("cli", "integrations"):
            continue
        for node, target, _, local in imports(path):
            if local and target.startswith("rws_hub"):
                bad.append(f"{where(path, node)} imports {target} inside a function")
    assert not bad, "\n".join(bad)


def test_no_circles() -> None:
    mods = {module_name(p): p for p in package_modules()}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for _, target, names, _ in imports(p):
            for t in [target] + [f"{target}.{n}" for n in names]:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m and not (mods[t].name == "__init__.py" and m.startswith(t + ".")):
                    edges[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m)


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("benchmarks", "tests"), ("tests", "benchmarks")]
)
def test_benchmarks_and_tests_apart(folder: str, forbidden: str) -> None:
    bad = []
    for path in (REPO_ROOT / folder).rglob("*.py"):
        text = path.read_text()
        for node, target, _, _ in imports(path):
            if target.split(".")[0] in (forbidden, "soak", "helpers") and folder == "benchmarks":
                bad.append(where(path, node))
            if folder == "tests" and target.split(".")[0] in ("soak", "bench_engine", "results"):
                bad.append(where(path, node))
        for line in text.splitlines():
            if "sys.path" in line and f'"{forbidden}"' in line:
                bad.append(f"{path.relative_to(REPO_ROOT)} puts {forbidden}/ on sys.path")
    assert not bad, "\n".join(bad)
