"""relay/transport/ is where the relay relies on other libraries' internals (private attributes,
one server implementation's behaviour). Each module names the versions it was read against in
`CHECKED_WITH`; an upgrade fails here, loudly, until someone re-reads what that module uses in the
new version (its docstring says what) and bumps the figure. constraints.txt pins what CI installs;
pyproject.toml's lower bounds are what the code needs at least."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import version

import pytest

import relay.transport

MODULES = [f"relay.transport.{m.name}" for m in pkgutil.iter_modules(relay.transport.__path__)]


def test_every_transport_module_names_the_versions_it_was_checked_against() -> None:
    assert {"relay.transport.http", "relay.transport.twilio", "relay.transport.provider"} <= set(MODULES)
    for name in MODULES:
        assert getattr(importlib.import_module(name), "CHECKED_WITH", None), f"{name} has no CHECKED_WITH"


@pytest.mark.parametrize("name", MODULES)
def test_installed_versions_are_the_checked_ones(name: str) -> None:
    checked = importlib.import_module(name).CHECKED_WITH
    for package, expected in checked.items():
        installed = version(package)
        assert installed == expected, (
            f"{package} {installed} is installed, but {name} was checked against {expected}: read what "
            f"its docstring says it relies on in {package} {installed}, rerun tests/test_write_order.py "
            f"and tests/test_http_edge.py, then update CHECKED_WITH in {name}"
        )
