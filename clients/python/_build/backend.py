"""A minimal PEP 517 / PEP 660 build backend, standard library only.

It builds a pure-Python wheel of the "agentnet" package (and an sdist), so
"pip install ./clients/python" needs no build tool from an index. The
project's name, version, description and requires-python come from
pyproject.toml's [project] table.
"""

import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "agentnet"


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if not m:
        raise RuntimeError("pyproject.toml has no [project] table")
    fields = {}
    for key in ("name", "version", "description", "requires-python"):
        km = re.search(r'^%s\s*=\s*"([^"]*)"' % re.escape(key), m.group(1), re.M)
        if km:
            fields[key] = km.group(1)
    return fields


def _metadata():
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        "Name: " + p["name"],
        "Version: " + p["version"],
        "Summary: " + p.get("description", ""),
    ]
    if "requires-python" in p:
        lines.append("Requires-Python: " + p["requires-python"])
    readme = os.path.join(ROOT, "README.md")
    body = ""
    if os.path.exists(readme):
        lines.append("Description-Content-Type: text/markdown")
        with open(readme, encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _dist_name():
    p = _project()
    return re.sub(r"[-_.]+", "_", p["name"]), p["version"]


def _wheel_text(tag):
    return "Wheel-Version: 1.0\nGenerator: agentnet-backend\nRoot-Is-Purelib: true\nTag: %s\n" % tag


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (path, digest, len(data))


def _package_files():
    pkg = os.path.join(ROOT, PACKAGE)
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in sorted(filenames):
            if fn.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(dirpath, fn)
            yield os.path.relpath(full, ROOT).replace(os.sep, "/"), full


def _write_wheel(wheel_directory, files):
    name, version = _dist_name()
    tag = "py3-none-any"
    wheel_name = "%s-%s-%s.whl" % (name, version, tag)
    distinfo = "%s-%s.dist-info" % (name, version)
    records = []
    path = os.path.join(wheel_directory, wheel_name)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        def add(arcname, data):
            zi = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            z.writestr(zi, data, zipfile.ZIP_DEFLATED)
            records.append(_record_line(arcname, data))
        for arcname, data in files:
            add(arcname, data)
        add(distinfo + "/METADATA", _metadata().encode("utf-8"))
        add(distinfo + "/WHEEL", _wheel_text(tag).encode())
        records.append(distinfo + "/RECORD,,")
        z.writestr(distinfo + "/RECORD", "\n".join(records) + "\n")
    return wheel_name


# --- PEP 517 hooks ---

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = []
    for arcname, full in _package_files():
        with open(full, "rb") as f:
            files.append((arcname, f.read()))
    return _write_wheel(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # A .pth file that puts the source tree on sys.path (PEP 660).
    return _write_wheel(wheel_directory, [("agentnet_editable.pth", (ROOT + "\n").encode())])


def build_sdist(sdist_directory, config_settings=None):
    name, version = _dist_name()
    base = "%s-%s" % (name, version)
    path = os.path.join(sdist_directory, base + ".tar.gz")
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as t:
        members = ["pyproject.toml", "README.md", "_build/backend.py"] + [a for a, _ in _package_files()]
        for rel in members:
            full = os.path.join(ROOT, rel)
            if os.path.exists(full):
                t.add(full, arcname=base + "/" + rel)
        pkg_info = _metadata().encode("utf-8")
        ti = tarfile.TarInfo(base + "/PKG-INFO")
        ti.size = len(pkg_info)
        t.addfile(ti, io.BytesIO(pkg_info))
    return base + ".tar.gz"
