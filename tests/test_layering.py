"""Imports go down the layers and never in a circle.

Every ``import`` of every module of ``src/mssl`` counts, at module level or inside a function (a lazy
import is still a dependency). The layers, lowest first; a module may import its own layer and the
layers below it (the README's layout section states the same order):

    mssl (the package: its API resolves names lazily), nnunet_arch
    config, runs
    data
    models
    losses, views
    methods
    weights
    train
    viz
    downstream
    pipelines
    commands
    cli
    launcher
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import mssl

SOURCE = Path(mssl.__file__).parent
LAYERS = [
    {"mssl", "nnunet_arch"},
    {"config", "runs"},
    {"data"},
    {"models"},
    {"losses", "views"},
    {"methods"},
    {"weights"},
    {"train"},
    {"viz"},
    {"downstream"},
    {"pipelines"},
    {"commands"},
    {"cli"},
    {"launcher"},
]


def module_files() -> dict[str, Path]:
    """``mssl.x.y`` → its file, for every module of the package (a package is its ``__init__.py``)."""
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that ``name`` imports (``from a import b`` counts ``a.b`` when ``b`` is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """The layer of ``mssl.<top>...`` by its top-level module or package."""
    top = module.split(".")[1] if "." in module else module
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module}: its top-level name {top!r} has no layer; add it to LAYERS (and the README)")


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(module, imported) for module, targets in graph.items() for imported in targets if layer_of(imported) > layer_of(module)}


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "mssl.data.crops" in graph["mssl.data.cache"]  # module level
    assert "mssl.weights.nnunet" in graph["mssl.weights.exporter"]  # inside a function
    assert "mssl.downstream.training_probe" in graph["mssl.pipelines.pretrain"]


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = upward_imports(import_graph())
    assert not upward, f"imports from a layer above: {sorted(upward)}"


def test_no_import_cycle_between_modules() -> None:
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None


# Views, losses and models take plain arguments; the methods map their config to them (issue #14).
# The exceptions: build_backbone is the one mapping of BackboneConfig (task_networks builds the fine-tuning
# networks on it, from the same config), and size_problem is a rule, not a config.
CONFIG_IMPORTS_BELOW_METHODS = {"mssl.models.backbones", "mssl.models.task_networks", "mssl.models.features"}


def test_views_losses_and_models_take_no_config() -> None:
    below = {layer_of("mssl.models"), layer_of("mssl.views")}
    readers = {name for name, targets in import_graph().items() if "mssl.config" in targets and layer_of(name) in below}
    assert readers <= CONFIG_IMPORTS_BELOW_METHODS, f"import mssl.config below the methods: {sorted(readers - CONFIG_IMPORTS_BELOW_METHODS)}"
