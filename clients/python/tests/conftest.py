"""pytest setup: coroutine tests run in a fresh event loop each (no plugin needed), and every
test gets a broker of its own from the ``broker`` fixture (tests/broker.py)."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
# The package from this checkout, whether or not it is installed.
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from broker import WHARF_BIN, Broker  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> "bool | None":
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(asyncio.wait_for(pyfuncitem.obj(**args), 120))
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: "list[pytest.Item]") -> None:
    if not os.path.exists(WHARF_BIN):
        skip = pytest.mark.skip(reason=f"no wharf binary at {WHARF_BIN}: run cargo build, or set WHARF_BIN")
        for item in items:
            if "broker" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker().start()
    try:
        yield b
    finally:
        b.stop()
