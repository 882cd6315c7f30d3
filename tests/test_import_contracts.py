"""The design's import rules ([tool.importlinter] in pyproject.toml): `lint-imports` keeps them on
this tree, and each contract breaks when a copy of the tree gets the import it forbids."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    """`lint-imports` run on the tree at `cwd` (it analyses the packages found there first)."""
    only = [arg for contract_id in contract_ids for arg in ("--contract", contract_id)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *only],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "250"},  # rich wraps at 80 columns otherwise
        capture_output=True,
        text=True,
        timeout=30,
    )


def contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout
    for contract in contracts().values():
        assert contract["name"] in result.stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages, the import-linter configuration and its contract type."""
    skip = shutil.ignore_patterns("__pycache__")
    for package in ("relay", "cascade", "webhooks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=skip)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "import_contracts.py", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("contract_id", "module", "statement", "reported"),
    [
        (
            "codecs-leaf",
            "relay/codecs/leak.py",
            "from relay.config import Settings",
            "relay.codecs.leak -> relay.config (l.1)",
        ),
        (
            "tools-pathless",
            "relay/tools/leak.py",
            "from relay.sessions.store import MemoryStore",
            "relay.tools.leak -> relay.sessions.store (l.1)",
        ),
        (
            "tools-pathless",
            "relay/tools/leak.py",
            "import cascade.vad",
            "relay.tools.leak -> cascade.vad (l.1)",
        ),
        (
            "cascade-no-twilio-transport",
            "cascade/leak.py",
            "import relay.media_stream",
            "cascade.leak -> relay.media_stream (l.1)",
        ),
        (
            "no-testing-in-production",
            "webhooks/leak.py",
            "from relay.testing.twilio import FakeTwilioCall",
            "webhooks.leak -> relay.testing.twilio (l.1)",
        ),
        (
            # The demo's own use of the fakes is allowed; reaching relay.testing through it is not.
            "fakes-only-from-cli",
            "relay/leak.py",
            "def start() -> None:\n    from relay.fakes import local_fakes",
            "relay.leak -> relay.fakes (l.2)",
        ),
        (
            # A cycle that leaves one root package and comes back: acyclic_siblings cannot see it.
            "acyclic-packages",
            "webhooks/leak.py",
            "import relay.app",
            "webhooks.leak -> relay.app (l.1)",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree: Path, contract_id: str, module: str, statement: str, reported: str
) -> None:
    assert lint_imports(tree, contract_id).returncode == 0
    (tree / module).write_text(statement + "\n")
    result = lint_imports(tree, contract_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contracts()[contract_id]['name']} BROKEN" in result.stdout
    assert reported in result.stdout


def test_the_cycle_report_names_the_packages_and_the_lines(tree: Path) -> None:
    (tree / "webhooks" / "leak.py").write_text('"""A leak."""\n\nimport relay.app\n')
    result = lint_imports(tree, "acyclic-packages")
    assert result.returncode == 1
    # Either import can be the one nominated to break the cycle; the report shows the way round.
    assert "webhooks -> relay.app -> webhooks:" in result.stdout or (
        "relay.app -> webhooks -> relay.app:" in result.stdout
    )
    assert "webhooks.leak -> relay.app (l.3)" in result.stdout


def test_an_ignored_import_that_is_gone_is_an_error(tree: Path) -> None:
    """Removing a temporarily ignored import (a TODO in pyproject.toml) makes lint-imports ask for
    its ignore line to go too, so no exception outlives its reason."""
    cli = tree / "relay" / "cli.py"
    cli.write_text(cli.read_text().replace("from relay.demo import", "from relay.doctor import"))
    result = lint_imports(tree, "fakes-only-from-cli")
    assert result.returncode == 1
    assert "No matches for ignored import relay.cli -> relay.demo." in result.stdout


def module_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported outside any function or class body."""
    found: set[str] = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        pending.extend(ast.iter_child_nodes(node))
    return found


def all_imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_cli_loads_the_declared_exceptions_only_inside_its_commands() -> None:
    """The exceptions to "production code never imports relay.testing" are ignored imports of the
    CLI; they stay exceptions only while `relay serve` never runs them."""
    cli = ast.parse((ROOT / "relay" / "cli.py").read_text())

    def exception(module: str) -> bool:
        return module in ("relay.demo", "relay.fakes") or module.startswith("relay.simulate")

    assert {"relay.demo", "relay.fakes", "relay.simulate.command"} <= set(filter(exception, all_imports(cli)))
    assert not list(filter(exception, module_level_imports(cli)))


def test_the_cascade_contract_names_every_twilio_transport_module() -> None:
    forbidden = set(contracts()["cascade-no-twilio-transport"]["forbidden_modules"])
    assert {"relay.media_stream", "relay.transport.twilio"} <= forbidden
