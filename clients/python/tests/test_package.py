"""`pip install clients/python` works offline: the build backend is in the directory (no
setuptools to fetch), and the installed package imports with websockets as its one dependency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pip_installs_the_package_offline(tmp_path: Path) -> None:
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not installed")
    target = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir", "--quiet",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (target / "wharf_client" / "py.typed").exists()
    check = (
        "import sys; sys.path.insert(0, sys.argv[1]); import wharf_client, importlib.metadata as m;"
        "assert wharf_client.__file__.startswith(sys.argv[1]), wharf_client.__file__;"
        "d = m.distribution('wharf-client');"
        "print(d.version, [r for r in d.requires if 'extra' not in r])"
    )
    # From another directory, with only the installed copy and websockets on the path.
    out = subprocess.run([sys.executable, "-c", check, str(target)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0 ['websockets>=13']"
