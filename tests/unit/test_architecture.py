"""The import rule of docs/ARCHITECTURE.md, checked on the source: no cycles, and imports only flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("data_pipeline", "ds_train")
# The layers of docs/ARCHITECTURE.md, lowest first: a module may import only modules of its own layer or lower ones.
# A name is a sub-package (all its modules) or a module; the longest matching name decides.
LAYERS = (
    ("data_pipeline", "data_pipeline.types", "data_pipeline.errors", "data_pipeline.demo"),
    ("data_pipeline.ingest",),
    ("data_pipeline.codecs", "data_pipeline.layout"),
    ("data_pipeline.importers", "data_pipeline.prepare"),
    ("data_pipeline.loading",),
    # the HealthCheck enum is named by the config's policies: it sits with the config, below everything else
    ("ds_train", "ds_train.config", "ds_train.errors", "ds_train.monitor.health"),
    ("ds_train.model",),
    ("ds_train.components",),
    ("ds_train.monitor",),
    ("ds_train.inference",),
    ("ds_train.evaluation",),
    ("ds_train.trainer",),
    ("ds_train.__main__", "ds_train.doctor", "ds_train.demo", "ds_train.info", "ds_train.export", "ds_train.runner"),
)
# Modules that run or drive training; nothing below them may import them.
TRAINING = {"ds_train.trainer", "ds_train.doctor", "ds_train.demo", "ds_train.__main__"}
# Loading, inference and the model never import the training loop (nanochat's rule: inference stands alone).
NEVER_IMPORT_TRAINING = (
    "ds_train.config", "ds_train.model.build", "ds_train.components.data", "ds_train.model.modeling",
    "ds_train.model.loss", "ds_train.components.checkpoint", "ds_train.export", "ds_train.inference.generate",
    "ds_train.evaluation.held_out", "ds_train.monitor.health_monitor", "ds_train.monitor.metrics",
)  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (at any depth of its code, function bodies included)."""
    files = [f for pkg in PACKAGES for f in (REPO / pkg).rglob("*.py")]
    modules = {_module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (base, node.module or "") if p)
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_data_pipeline_knows_nothing_of_the_trainer_or_deepspeed() -> None:
    for path in (REPO / "data_pipeline").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            bad = [n for n in names if n.split(".")[0] in ("ds_train", "deepspeed")]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_inference_checkpoints_and_the_model_never_import_the_training_loop() -> None:
    graph = _imports()
    for module in NEVER_IMPORT_TRAINING:
        assert module in graph, f"{module} moved: update this test and docs/ARCHITECTURE.md"
        assert not graph[module] & TRAINING, f"{module} imports {graph[module] & TRAINING}"


def test_no_import_cycles() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [module, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest name that is `module` or a package above it."""
    best, found = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), index
    assert found is not None, f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md"
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})"
        for module, deps in sorted(graph.items())
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(module)
    ]


def test_sub_packages_import_only_their_own_layer_or_lower_ones() -> None:
    upward = upward_imports(_imports())
    assert not upward, "imports running up the layers of docs/ARCHITECTURE.md:\n" + "\n".join(upward)


def test_the_layer_check_names_an_upward_import() -> None:
    """The check can fail: the model importing the trainer, or a prepared-set writer importing the reader, is named."""
    graph = _imports()
    graph["ds_train.model.modeling"] = graph["ds_train.model.modeling"] | {"ds_train.trainer"}
    graph["data_pipeline.prepare.shards"] = graph["data_pipeline.prepare.shards"] | {"data_pipeline.loading.collator"}
    assert upward_imports(graph) == [
        "data_pipeline.prepare.shards (layer 3) imports data_pipeline.loading.collator (layer 4)",
        "ds_train.model.modeling (layer 6) imports ds_train.trainer (layer 11)",
    ]


def test_every_sub_package_says_its_stage() -> None:
    for pkg in PACKAGES:
        for init in (REPO / pkg).rglob("__init__.py"):
            assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(REPO)} has no docstring"
