"""The import graph runs one way: general_util at the bottom, data and models on it, modules on those, then
post_processors and the training side; trainer.py and the tools on top. No module imports itself back
through others. Checked from the source (every import statement, inside functions too), not by importing."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# package -> the project packages it may import (besides itself)
MAY_IMPORT = {
    "general_util": set(),
    "data": {"general_util"},
    "models": {"general_util"},
    "modules": {"general_util", "data"},
    "post_processors": {"general_util", "data", "models", "modules"},
    "training": {"general_util", "data", "models", "modules"},
}
TOP_LEVEL = ("trainer", "trainer_base_ds_v1", "apply_delta", "make_delta", "generate")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [p for package in MAY_IMPORT for p in (REPO / package).rglob("*.py")]
    files += [REPO / f"{name}.py" for name in TOP_LEVEL]
    return {module_name(p): p for p in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (`from a.b import c` counts a.b.c when that is a module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def test_packages_import_only_the_layers_below():
    wrong = [f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
             if module.split(".")[0] in MAY_IMPORT and target.split(".")[0] != module.split(".")[0]
             and target.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]]
    assert not wrong, wrong


def test_no_import_circles():
    graph = import_graph()
    circles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, [" -> ".join(c) for c in circles]


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every module `path` imports (every import statement, inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


DEVELOPMENT = {"bench", "devtools", "tests"}  # the benchmarks, the machinery they and the tests share, the tests


def test_what_training_runs_imports_no_bench_test_or_development_code():
    wrong = [f"{name} imports {package}" for name, path in project_modules().items()
             for package in top_level_imports(path) & DEVELOPMENT]
    assert not wrong, wrong


def test_the_tests_import_no_bench_code():
    """The tests' machinery stands on its own (devtools/ holds what the benches share with it); the benches'
    own tests live beside them, in bench/tests."""
    wrong = [f"{path.relative_to(REPO)} imports bench" for path in sorted((REPO / "tests").rglob("*.py"))
             if "bench" in top_level_imports(path)]
    assert not wrong, wrong


# DeepSpeed's own features, the only modules that import it: its engine (and ZeRO-3's partitioned loading and
# gathered parameters), its checkpoint conversions, Ulysses sequence parallelism
DEEPSPEED_FEATURES = {"training.deepspeed_engine", "training.universal_checkpoint", "models.convert", "models.vocab",
                      "modules.sequence_parallel"}


def test_deepspeed_is_imported_only_where_its_features_are_used():
    """Not on the ground floor, not by the data, the evaluators or trainer.py, not on FSDP2's path: the process
    group is torch.distributed's (tests/test_fsdp2.py trains engine=fsdp2 where DeepSpeed cannot be imported)."""
    importers = {name for name, path in project_modules().items() if "deepspeed" in top_level_imports(path)}
    assert importers <= DEEPSPEED_FEATURES, sorted(importers - DEEPSPEED_FEATURES)
    for package in ("general_util", "data", "post_processors", "trainer", "training.fsdp2_engine", "training.engine",
                    "training.config"):
        assert not {name for name in importers if name == package or name.startswith(package + ".")}, package


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("import os\n\ndef f():\n    from general_util.errors import UserError\n    import data.labels\n")
    assert imports_of(source, {"general_util.errors", "data.labels", "general_util"}) == {"general_util.errors",
                                                                                          "data.labels"}
    assert top_level_imports(source) == {"os", "general_util", "data"}
