"""The house's layers: every import inside the package, at top level or inside a function, goes down (or stays
within its own layer). No exception list: an import that goes up fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "unlearnable"

#: bottom to top; a module may import its own layer and the ones below it
LAYERS = [
    {"errors"},
    {"utils", "interrupts", "stats"},
    {"config", "registry", "results"},
    {"runs"},
    {"models", "data"},
    {"adapters", "losses"},
    {"training"},
    {"generation"},
    {"judges", "utility", "flaggers", "attacks"},
    {"threat_models"},
    {"evaluation"},
    {"vectors"},
    {"defenses"},
    {"report"},
    {"experiments"},
    {"cli"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def concept(module: str) -> str | None:
    """``unlearnable.vectors.fold`` -> ``vectors``; the package itself (its lazy ``__init__``) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "unlearnable" else None


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import in the file, wherever it stands."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.level and not node.module:  # `from . import x`: x is a module (or a name) of the package
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return [(line, t) for line, t in out if t == "unlearnable" or t.startswith("unlearnable.")]


FILES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    missing = sorted({concept(module_name(p)) for p in FILES} - set(LEVEL))
    assert not missing, f"modules without a layer in LAYERS: {missing}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down(path):
    mine = concept(module_name(path))
    up = []
    for line, target in imports(path):
        theirs = concept(target)
        if theirs not in LEVEL:  # `unlearnable` itself, or a name defined in its __init__
            up.append(f"line {line}: imports the package root (its lazy names are for users)")
        elif LEVEL[theirs] > LEVEL[mine]:
            up.append(f"line {line}: {mine} (layer {LEVEL[mine]}) imports {target} (layer {LEVEL[theirs]})")
    assert not up, "\n".join(up)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """A lazy import that goes up is found like a top-level one, relative imports resolved."""
    pkg = tmp_path / "unlearnable" / "vectors"
    pkg.mkdir(parents=True)
    probe = pkg / "probe.py"
    probe.write_text("from ..training import train\n\ndef f():\n    from ..cli import main\n    import unlearnable.report\n",
                     encoding="utf-8")
    found = {t for _, t in imports(probe, root=tmp_path)}
    assert found == {"unlearnable.training", "unlearnable.cli", "unlearnable.report"}
    assert {concept(t) for t in found} == {"training", "cli", "report"}
