"""The one code asset every Lambda function runs: ``ctfleet/`` and ``dispatcher/`` with their dependencies, no torch.

``python -m infra.asset --out build/lambda.zip`` installs the handlers' third-party dependencies
at the exact pins of ``constraints.txt`` as Linux x86_64 wheels for the functions' runtime
(``python3.12``, on Amazon Linux 2023: glibc 2.34, so the pinned numpy's ``manylinux_2_28`` wheels
and pylibjpeg-libjpeg's ``manylinux_2_31`` load; ``python3.11`` runs on Amazon Linux 2, glibc 2.26, where
they would not), adds the
repository's ``ctfleet/`` (without the CLI, the local stack and the developer tools, which the
handlers never import and which import torch), ``dispatcher/`` and the three numpy-only modules of
``model/`` the kernel's contracts use (labels, volume), and writes a zip whose bytes
depend only on its contents (sorted entries, fixed timestamps), so Pulumi uploads it again only
when the code or a pin changes. The analysis model (``model/``, torch) runs on the GPU workers,
never in a function.

Imports the standard library only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = "python3.12"
PYTHON_VERSION = "3.12"
# Amazon Linux 2023 runs glibc 2.34 and every older manylinux tag (pip does not expand --platform itself).
PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(34, 16, -1)) + ("manylinux2014_x86_64",)
# What the handlers import (their closure is resolved by pip, pinned by constraints.txt).
REQUIREMENTS = ("boto3", "botocore", "PyJWT", "cryptography", "numpy", "pillow", "pydicom", "pylibjpeg",
                "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls", "requests", "tenacity", "dicom-anonymizer")
# Parts of ctfleet/ no handler imports: the CLI, the local stack and the developer tools (torch).
EXCLUDED = ("ctfleet/cli", "ctfleet/local", "ctfleet/dev", "ctfleet/__main__.py")
# Of model/, what the shared kernel's contracts and ingest's volume checks need: numpy only, no torch.
MODEL_FILES = ("model/__init__.py", "model/labels.py", "model/volume.py")
# Lambda's limit for a function's code, unzipped.
MAX_UNZIPPED_BYTES = 250 * 1024**2
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Asset:
    """A built asset: where it is, its size zipped and unzipped, and how many files it holds."""

    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    files: int


def _install(target: Path, pip_args: Sequence[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
           "--target", str(target), *(a for p in PLATFORMS for a in ("--platform", p)), "--implementation", "cp",
           "--python-version", PYTHON_VERSION, "--only-binary=:all:", "-c", str(REPO / "constraints.txt"),
           *pip_args, *REQUIREMENTS]
    subprocess.run(cmd, check=True)


def _source_files() -> list[tuple[Path, str]]:
    """The repository's handler code: ``(path, name in the zip)``."""
    files = []
    for package in ("ctfleet", "dispatcher"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not any(rel == e or rel.startswith(e + "/") for e in EXCLUDED):
                files.append((path, rel))
    return files + [(REPO / rel, rel) for rel in MODEL_FILES]


def _site_files(site: Path) -> list[tuple[Path, str]]:
    """Installed dependencies, without bytecode caches and the scripts pip puts in ``bin/``."""
    return [(p, p.relative_to(site).as_posix()) for p in sorted(site.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.relative_to(site).parts[0] != "bin"]


def build(out: Path, *, pip_args: Sequence[str] = ()) -> Asset:
    """Build the asset at ``out`` (its folder is created); see the module docstring."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctfleet-asset-") as tmp:
        site = Path(tmp) / "site"
        _install(site, pip_args)
        entries = sorted({name: path for path, name in [*_site_files(site), *_source_files()]}.items())
        unzipped = 0
        partial = out.with_suffix(".zip.partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for name, path in entries:
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                data = path.read_bytes()
                unzipped += len(data)
                zf.writestr(info, data)
        shutil.move(partial, out)
    if unzipped > MAX_UNZIPPED_BYTES:
        raise RuntimeError(f"the functions' asset is {unzipped / 1024**2:.0f} MB unzipped; Lambda allows 250 MB")
    return Asset(out, out.stat().st_size, unzipped, len(entries))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.asset", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "lambda.zip", help="where to write the zip")
    a = ap.parse_args(argv)
    asset = build(a.out)
    print(f"{asset.path}: {asset.files} files, {asset.zipped_bytes / 1024**2:.1f} MB zipped, "
          f"{asset.unzipped_bytes / 1024**2:.1f} MB unzipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
