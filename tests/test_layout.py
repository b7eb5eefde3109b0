"""The package's imports follow its data flow (DESIGN.md "Layout"): base modules <- `data` <- `train` | `infer`
(siblings: neither imports the other) <- `eval`. Every import counts, function-local ones included."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "flmjax"

# The stages of the data flow, by their subpackage; every other module (config, layers, model, sharding, convert,
# checkpoints, codec, ...) is a base module. A module may import its own stage and earlier ones only.
STAGES = {"data": 1, "train": 2, "infer": 2, "eval": 3}
BASE = 0


def stage_of(module: str) -> str:
    """`flmjax.train.loop` -> "train"; a base module -> "base"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "base"


def is_backward(importer: str, imported: str) -> bool:
    """Whether `importer` may not import `imported`: a later stage, or the other of two siblings."""
    source, target = stage_of(importer), stage_of(imported)
    rank_source, rank_target = STAGES.get(source, BASE), STAGES.get(target, BASE)
    return rank_target > rank_source or (rank_target == rank_source and source != target)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, flmjax module or name) of every import in `source` (the text of `module`), at any depth: module
    level, in functions, under `if TYPE_CHECKING`. `from flmjax.x import y` gives both `flmjax.x` and
    `flmjax.x.y` (y may be a module); relative imports are made absolute."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "flmjax" or name.startswith("flmjax.")]


def backward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """`module:LINE imports NAME` for each import of `source` against the data flow."""
    return sorted(
        {
            f"{module}:{line} imports {name} ({stage_of(module)} <- {stage_of(name)})"
            for line, name in imported_modules(source, module, is_package)
            if is_backward(module, name)
        }
    )


def package_modules() -> list[tuple[str, pathlib.Path]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append((".".join(parts), path))
    return modules


def test_no_module_imports_against_the_data_flow():
    problems = [
        problem
        for module, path in package_modules()
        for problem in backward_imports(path.read_text(), module, path.name == "__init__.py")
    ]
    assert not problems, "imports against the data flow:\n  " + "\n  ".join(problems)


def test_the_package_has_every_stage_and_the_checkpoints_base():
    names = {module for module, _ in package_modules()}
    assert {"flmjax.data", "flmjax.train", "flmjax.infer", "flmjax.eval", "flmjax.checkpoints", "flmjax.codec"} <= names


@pytest.mark.parametrize(
    "module, source, backward",
    [
        ("flmjax.train.loop", "from flmjax.eval import dialogs\n", True),  # a later stage
        ("flmjax.infer.stream", "from flmjax.train import checkpoint\n", True),  # a sibling
        ("flmjax.train.step", "from flmjax.infer.stream_slots import init_stream\n", True),  # the other sibling
        ("flmjax.data.dataset", "import flmjax.train.loss\n", True),  # a plain import
        ("flmjax.model", "from flmjax.data import text\n", True),  # a base module importing a stage
        ("flmjax.checkpoints.paths", "from ..train import loop\n", True),  # a relative import
        ("flmjax.train.loop", "def run():\n    if True:\n        from flmjax.eval import dialogs\n", True),  # local
        ("flmjax.eval.fdb_run", "from flmjax.infer import sessions\nfrom flmjax.train import step\n", False),
        ("flmjax.train.loop", "from flmjax.data import pipeline\nfrom flmjax import checkpoints, model\n", False),
        ("flmjax.data.dataset", "from . import records\nimport numpy\n", False),
    ],
)
def test_the_checker_catches_a_backward_import(module, source, backward):
    assert bool(backward_imports(source, module)) == backward


MAX_MODULE_LINES = 400  # issue 15: one module per job, none over ~400 lines


def test_no_module_is_over_the_size_of_one_job():
    """Every module of the package, the launchers and the configs stays within MAX_MODULE_LINES lines."""
    root = PACKAGE.parent
    paths = [path for folder in ("flmjax", "launch", "configs") for path in sorted((root / folder).rglob("*.py"))]
    assert len(paths) > 50  # the walk found the tree
    too_long = {
        str(path.relative_to(root)): count
        for path in paths
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {too_long}"
