"""The import rule of docs/ARCHITECTURE.md, checked on the source: no cycles, and imports only flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("data_pipeline", "ds_train")
# Modules that run or drive training; nothing below them may import them.
TRAINING = {"ds_train.trainer", "ds_train.doctor", "ds_train.demo", "ds_train.__main__"}
# Loading, inference and the model never import the training loop (nanochat's rule: inference stands alone).
NEVER_IMPORT_TRAINING = (
    "ds_train.config", "ds_train.build", "ds_train.data", "ds_train.model", "ds_train.loss", "ds_train.checkpoint",
    "ds_train.export", "ds_train.generate", "ds_train.evaluation", "ds_train.monitor", "ds_train.metrics",
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
