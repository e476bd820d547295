"""A PEP 517 build backend for wharf-client, standard library only.

pip builds a package in an isolated environment and would first fetch the backend named in
pyproject.toml (setuptools, say) from an index; this one lives here (``backend-path``), so
``pip install clients/python`` works offline. It builds a pure-Python wheel of
``wharf_client/``, an sdist, and an editable wheel (``pip install -e``: a ``.pth`` file).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "wharf_client"


def _project() -> Dict[str, object]:
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
        data = f.read()
    try:
        import tomllib  # Python 3.11+

        return dict(tomllib.loads(data.decode())["project"])
    except ImportError:
        # Python 3.9/3.10: the few keys this file uses, read with patterns.
        text = data.decode()
        section = text.split("[project]", 1)[1].split("\n[", 1)[0]

        def value(key: str) -> str:
            m = re.search(rf'^{re.escape(key)}\s*=\s*"([^"]*)"', section, re.M)
            return m.group(1) if m else ""

        deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", section, re.M | re.S)
        lic = re.search(r'^license\s*=\s*\{\s*text\s*=\s*"([^"]*)"', section, re.M)
        return {
            "name": value("name"),
            "version": value("version"),
            "description": value("description"),
            "requires-python": value("requires-python"),
            "dependencies": re.findall(r'"([^"]+)"', deps.group(1)) if deps else [],
            "license": {"text": lic.group(1)} if lic else {},
            "readme": value("readme"),
        }


def _names() -> Tuple[str, str, str]:
    p = _project()
    name, version = str(p["name"]), str(p["version"])
    dist = re.sub(r"[-_.]+", "_", name)
    return name, version, dist


def _metadata() -> str:
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p.get('description', '')}",
        f"Requires-Python: {p.get('requires-python', '')}",
    ]
    lic = p.get("license") or {}
    if isinstance(lic, dict) and lic.get("text"):
        lines.append(f"License: {lic['text']}")
    for dep in p.get("dependencies", []) or []:  # type: ignore[union-attr]
        lines.append(f"Requires-Dist: {dep}")
    for extra, deps in (p.get("optional-dependencies") or {}).items():  # type: ignore[union-attr]
        lines.append(f"Provides-Extra: {extra}")
        for dep in deps:
            lines.append(f'Requires-Dist: {dep}; extra == "{extra}"')
    readme = os.path.join(HERE, str(p.get("readme") or "README.md"))
    body = ""
    if os.path.exists(readme):
        lines.append("Description-Content-Type: text/markdown")
        with open(readme, encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _package_files() -> List[str]:
    out = []
    for root, dirs, files in os.walk(os.path.join(HERE, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".typed")):
                out.append(os.path.relpath(os.path.join(root, name), HERE))
    return out


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _wheel(wheel_directory: str, contents: List[Tuple[str, bytes]]) -> str:
    _, version, dist = _names()
    info = f"{dist}-{version}.dist-info"
    filename = f"{dist}-{version}-py3-none-any.whl"
    contents = list(contents) + [
        (f"{info}/METADATA", _metadata().encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: wharf-client _build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = [_record_line(a, d) for a, d in contents] + [f"{info}/RECORD,,"]
    contents.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, data in contents:
            z.writestr(zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return filename


def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> List[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[dict] = None) -> List[str]:
    return []


def build_wheel(wheel_directory: str, config_settings: Optional[dict] = None,
                metadata_directory: Optional[str] = None) -> str:
    contents = []
    for rel in _package_files():
        with open(os.path.join(HERE, rel), "rb") as f:
            contents.append((rel.replace(os.sep, "/"), f.read()))
    return _wheel(wheel_directory, contents)


def build_editable(wheel_directory: str, config_settings: Optional[dict] = None,
                   metadata_directory: Optional[str] = None) -> str:
    _, _, dist = _names()
    return _wheel(wheel_directory, [(f"_{dist}_editable.pth", (HERE + "\n").encode())])


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:
    _, version, dist = _names()
    base = f"{dist}-{version}"
    filename = f"{base}.tar.gz"
    files = ["pyproject.toml", "_build.py", "README.md"] + _package_files()
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz") as tar:
        for rel in files:
            path = os.path.join(HERE, rel)
            if os.path.exists(path):
                tar.add(path, arcname=f"{base}/{rel}")
        pkg_info = _metadata().encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg_info)
        tar.addfile(ti, io.BytesIO(pkg_info))
    return filename
