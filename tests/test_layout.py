"""The tree shows the architecture: the core of trainer/ never reaches into serving or
measurement, input/ knows nothing of the trainer, and no code reads outside the repository."""

import ast

from conftest import REPO

ENTRY_POINTS = {"main", "evaluate", "cross_validate", "distcheck", "export", "predict", "serve",
                "benchmark", "time_to_accuracy", "batch_scaling"}
NOT_CORE = ("trainer.bench", "trainer.serving")


def imported_modules(path):
    """Every module a file imports (absolute names; `from trainer import x` gives trainer.x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def core_files():
    files = [p for p in (REPO / "trainer").glob("*.py") if p.stem not in ENTRY_POINTS]
    return files + sorted((REPO / "trainer" / "models").glob("*.py"))


def test_the_core_never_imports_serving_measurement_or_entry_points():
    entry_points = {f"trainer.{name}" for name in ENTRY_POINTS}
    assert len(core_files()) > 10
    for path in core_files():
        wrong = {name for name in imported_modules(path)
                 if name.startswith(NOT_CORE) or name in entry_points}
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


def test_serving_and_measurement_live_in_their_own_packages():
    for package in NOT_CORE:
        folder = REPO / package.replace(".", "/")
        assert (folder / "__init__.py").exists() and len(list(folder.glob("*.py"))) > 1


def test_input_knows_nothing_of_the_trainer():
    for path in (REPO / "input").glob("*.py"):
        wrong = {name for name in imported_modules(path) if name.startswith("trainer")}
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


# The folder beside the checkout that only the project's developers have, spelled in two
# parts so that this test does not name it itself.
OUTSIDE = "../" + "shared"


def test_nothing_reads_or_points_outside_the_repository():
    for folder in ("input", "trainer", "launch", "tests"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".sh"):
                assert OUTSIDE not in path.read_text(), path
