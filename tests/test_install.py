"""Installing an extra never replaces the installed torch and leaves `cv2` to one distribution.

Checked with `pip install --dry-run --report` against PyPI (slow; skipped when PyPI cannot be reached,
unless IDGEN_REQUIRE_NETWORK=1, as CI sets it). Nothing is installed.
"""

import json
import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from idgen.doctor import CV2_DISTRIBUTIONS, NO_DEPS

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = sorted(PYPROJECT["project"]["optional-dependencies"])
ONNX_RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}
# Their own development tools, which pyiqa declares as dependencies and never imports.
DEV_TOOLS = {"pre-commit", "pytest", "ruff"}


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def network() -> None:
    if not _pypi_reachable():
        if os.environ.get("IDGEN_REQUIRE_NETWORK") == "1":
            pytest.fail("PyPI is not reachable and IDGEN_REQUIRE_NETWORK=1")
        pytest.skip("PyPI is not reachable")


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def pip_dry_run() -> list[str]:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-input", "--report", "-"]
    setuptools = installed("setuptools")
    if setuptools is not None and Version(setuptools) >= Version("77"):
        cmd.append("--no-build-isolation")  # faster; without it pip fetches setuptools to read our metadata
    return cmd


def dry_run(*args: str, tmp_path: Path) -> dict[str, dict]:
    """{normalised name: metadata} of what pip would install, against a constraint holding torch."""
    constraint = tmp_path / "constraints.txt"
    constraint.write_text(f"torch=={installed('torch')}\n")
    cmd = [*pip_dry_run(), "-c", str(constraint), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, (
        f"{' '.join(args)}: pip cannot resolve it without changing torch\n{done.stderr}"
    )
    report = json.loads(done.stdout)
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in report["install"]}


def after_install(plan: dict[str, dict], names: set[str]) -> set[str]:
    """Which of `names` the environment holds once `plan` is installed."""
    return {n for n in names if installed(n) is not None} | (set(plan) & names)


@pytest.mark.slow
@pytest.mark.parametrize("extra", EXTRAS)
def test_no_extra_changes_torch_or_adds_a_second_cv2(extra: str, network: None, tmp_path: Path) -> None:
    plan = dry_run(f"{ROOT}[{extra}]", tmp_path=tmp_path)
    if extra in NO_DEPS:  # the documented second step
        plan |= dry_run("--no-deps", *NO_DEPS[extra], tmp_path=tmp_path)
    assert "torch" not in plan
    owners = after_install(plan, set(CV2_DISTRIBUTIONS))
    assert len(owners) <= 1, f"[{extra}]: {sorted(owners)} would all own cv2"
    runtimes = after_install(plan, ONNX_RUNTIMES)
    assert len(runtimes) <= 1, f"[{extra}]: {sorted(runtimes)} clash"
    assert not extra.endswith("-gpu") or "onnxruntime" not in plan


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["pulid", "iq", "lowvram"])
def test_without_a_constraint_torch_stays(extra: str, network: None, tmp_path: Path) -> None:
    """What a user types: no constraint file. pip keeps the installed torch."""
    done = subprocess.run([*pip_dry_run(), f"{ROOT}[{extra}]"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    names = {canonicalize_name(i["metadata"]["name"]) for i in json.loads(done.stdout)["install"]}
    assert "torch" not in names


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(NO_DEPS))
def test_the_no_deps_step_leaves_no_dependency_out(extra: str, network: None, tmp_path: Path) -> None:
    """Every dependency the --no-deps packages declare is in their extra, the core, or another of them,
    except opencv-python / CPU onnxruntime (left out on purpose) and development tools."""
    plan = dry_run("--no-deps", *NO_DEPS[extra], tmp_path=tmp_path)
    declared = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"][extra]
    covered = {canonicalize_name(Requirement(r).name) for r in declared} | set(plan)
    covered |= {"opencv-python"} | ONNX_RUNTIMES | DEV_TOOLS
    for name, meta in plan.items():
        for line in meta.get("requires_dist") or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert canonicalize_name(req.name) in covered, f"{name} needs {req.name}, not in [{extra}]"


def test_readme_and_makefile_give_the_no_deps_step_of_each_extra() -> None:
    readme = (ROOT / "README.md").read_text()
    for extra, packages in NO_DEPS.items():
        assert f"pip install --no-deps {' '.join(packages)}" in readme, extra
        assert extra in PYPROJECT["project"]["optional-dependencies"]
    assert f"PULID_NO_DEPS := {' '.join(NO_DEPS['pulid'])}" in (ROOT / "Makefile").read_text()


def test_licence_is_an_spdx_expression() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]
