"""Import directions between the layers of qcompiler (README, "Layout"), read from the source
with `ast`: every import statement counts, inside functions too, so no cycle can hide behind
an import in a function body. Imports under `if TYPE_CHECKING:` are for annotations only and
never run, so they do not count.

    bottom    qcompiler.errors, qcompiler.numerics.*          -> bottom
    ir        qcompiler.ir.*                                  -> bottom, ir
    core      qcompiler.frontends, quantization, compression,
              analysis, examples (and below)                  -> bottom, ir, core
    passes    qcompiler.passes.<module>                       -> bottom, ir, core (no other pass)
    backends  qcompiler.backends.*                            -> bottom, ir, core, backends
    top       the modules at the root of qcompiler/           -> anything
"""

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the import name of its package (setup.py installs passes/ and backends/
# as subpackages of qcompiler).
PACKAGES = {"qcompiler": "qcompiler", "passes": "qcompiler.passes", "backends": "qcompiler.backends"}
CORE = ("frontends", "quantization", "compression", "analysis", "examples")
ALLOWED = {
    "bottom": {"bottom"},
    "ir": {"bottom", "ir"},
    "core": {"bottom", "ir", "core"},
    "passes": {"bottom", "ir", "core"},  # and the package index its pass modules
    "backends": {"bottom", "ir", "core", "backends"},
    "top": {"bottom", "ir", "core", "passes", "backends", "top"},
}
# The package files that list their modules for the public API (`qc.passes.fold_batchnorm`,
# `qc.backends.interpreter`): importing the modules of their own layer is what they are for.
INDEXES = {"qcompiler.passes", "qcompiler.backends"}


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [*PACKAGES[folder].split("."), *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, str]:
    return {module_name(path): path.read_text() for folder in PACKAGES
            for path in sorted((ROOT / folder).rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "qcompiler.errors" or parts[:2] == ["qcompiler", "numerics"]:
        return "bottom"
    if parts[:2] == ["qcompiler", "ir"]:
        return "ir"
    if len(parts) > 1 and parts[1] in CORE:
        return "core"
    if parts[:2] == ["qcompiler", "passes"]:
        return "passes"
    if parts[:2] == ["qcompiler", "backends"]:
        return "backends"
    return "top"


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(module: str, source: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported qcompiler module, line, inside a function) for every import that runs."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno, in_function) for alias in node.names
                         if alias.name.split(".")[0] == "qcompiler")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = module.split(".")[: -node.level] if module not in INDEXES else module.split(".")
                base = ".".join([*package, *([base] if base else [])])
            if base.split(".")[0] == "qcompiler":
                for alias in node.names:  # `from package import module` imports the module
                    target = f"{base}.{alias.name}"
                    found.append((target if target in known else base, node.lineno, in_function))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(ast.parse(source), False)
    return found


def violations(modules: dict[str, str]) -> list[str]:
    """Every import against the layer rules (see the module docstring), in words."""
    known = set(modules)
    problems = []
    for module, source in modules.items():
        own = layer(module)
        for target, line, in_function in dict.fromkeys(imports(module, source, known)):
            where = f"{module} imports {target} (line {line}{', inside a function' if in_function else ''})"
            if own == "passes" and layer(target) == "passes":
                if module not in INDEXES:
                    problems.append(f"{where}: a pass never imports another pass; shared pieces "
                                    "belong in qcompiler.ir.edit or a core package")
            elif layer(target) not in ALLOWED[own]:
                problems.append(f"{where}: {own} may import {', '.join(sorted(ALLOWED[own]))} only")
    return problems


def import_graph(modules: dict[str, str]) -> nx.DiGraph:
    graph = nx.DiGraph()
    for module, source in modules.items():
        graph.add_node(module)
        for target, _, _ in imports(module, source, set(modules)):
            if target in modules and target != module:
                graph.add_edge(module, target)
    return graph


def test_every_module_is_read():
    modules = sources()
    assert {"qcompiler.ir.graph", "qcompiler.passes.fold_batchnorm", "qcompiler.backends.torch",
            "qcompiler.quantization.calibrate", "qcompiler.errors", "qcompiler"} <= set(modules)
    assert layer("qcompiler.numerics.quant") == "bottom" and layer("qcompiler.cli") == "top"
    assert layer("qcompiler.frontends.torch_export.capture") == "core"


def test_imports_follow_the_layer_directions():
    assert violations(sources()) == []


def test_no_import_cycles():
    """Not even inside a layer: a cycle needs an import inside a function body to load."""
    cycles = [cycle for cycle in nx.simple_cycles(import_graph(sources()))
              if not set(cycle) & INDEXES]
    assert cycles == []


@pytest.mark.parametrize(("module", "back_import", "expected"), [
    ("qcompiler.ir.graph", "from qcompiler.passes.fold_batchnorm import fold_batchnorm",
     "qcompiler.ir.graph imports qcompiler.passes.fold_batchnorm (line 2, inside a function): "
     "ir may import bottom, ir only"),
    ("qcompiler.quantization.calibrate", "from qcompiler.backends.torch import to_torch",
     "qcompiler.quantization.calibrate imports qcompiler.backends.torch (line 2, inside a function): "
     "core may import bottom, core, ir only"),
    ("qcompiler.passes.correct_bias", "from qcompiler.passes.insert_fake_quant import layer_bias",
     "qcompiler.passes.correct_bias imports qcompiler.passes.insert_fake_quant (line 2, inside a "
     "function): a pass never imports another pass; shared pieces belong in qcompiler.ir.edit or "
     "a core package"),
    ("qcompiler.backends.simulation_agreement", "import qcompiler.passes.lower_to_integer",
     "qcompiler.backends.simulation_agreement imports qcompiler.passes.lower_to_integer (line 2, "
     "inside a function): backends may import backends, bottom, core, ir only"),
    ("qcompiler.compression.budget_sensitivity", "from qcompiler import budget",
     "qcompiler.compression.budget_sensitivity imports qcompiler.budget (line 2, inside a function): "
     "core may import bottom, core, ir only"),
    ("qcompiler.numerics.quant", "from qcompiler.ir import Graph",
     "qcompiler.numerics.quant imports qcompiler.ir (line 2, inside a function): "
     "bottom may import bottom only"),
])
def test_a_deliberate_back_import_inside_a_function_is_caught(module, back_import, expected):
    modules = sources()
    line = modules[module].count("\n") + 3  # after the module's lines: a blank one, the def
    modules[module] += f"\ndef _added():\n    {back_import}\n"
    assert violations(modules) == [expected.replace("line 2", f"line {line}")]


def test_a_back_import_that_closes_a_cycle_is_caught():
    modules = sources()
    modules["qcompiler.ir.ops"] += "\ndef _added():\n    from qcompiler.ir import graph\n"
    cycles = [cycle for cycle in nx.simple_cycles(import_graph(modules)) if not set(cycle) & INDEXES]
    assert any(set(cycle) == {"qcompiler.ir.ops", "qcompiler.ir.graph"} for cycle in cycles)


def test_type_checking_imports_do_not_count():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from qcompiler.passes import x\n"
    assert imports("qcompiler.ir.printer", source, set()) == []
