"""The import contracts of ``make lint`` (pyproject.toml ``[tool.importlinter]``): the layers, redis only inside
``buffer/``, the engine's staging its own, the HTTP face apart from the drain — kept by the code, and failing on a
deliberate violation in a copy of the tree. Import cycles are ``tests/test_import_cycles.py``'s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mollifier_project", "runs", "api", "buffer", "drainer", "sweep", "demo", "telemetry")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "400"}  # one contract per line, not wrapped
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the product packages and the contracts, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_code_keeps_every_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 5 kept, 0 broken." in done.stdout


def test_a_package_outside_buffer_that_imports_redis_breaks_the_redis_contract(tree: Path):
    (tree / "drainer" / "shortcut.py").write_text("import redis\n")

    done = lint_imports(tree)

    assert done.returncode != 0
    assert "Only buffer imports redis BROKEN" in done.stdout
    assert "drainer.shortcut -> redis" in done.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_layers(tree: Path):
    (tree / "buffer" / "upward.py").write_text("from runs import engine\n")

    done = lint_imports(tree)

    assert done.returncode != 0
    assert (
        "Layers: demo | telemetry above api | sweep above drainer above runs above buffer above mollifier_project BROKEN"
        in done.stdout
    )
    assert "buffer.upward -> runs.engine" in done.stdout


@pytest.mark.parametrize("below", ["runs", "buffer", "drainer", "sweep"])
def test_the_domain_or_a_worker_importing_the_http_face_breaks_the_layers(tree: Path, below: str):
    (tree / below / "serves.py").write_text("from api import http\n")

    done = lint_imports(tree)

    assert done.returncode != 0
    assert (
        "Layers: demo | telemetry above api | sweep above drainer above runs above buffer above mollifier_project BROKEN"
        in done.stdout
    )
    assert f"{below}.serves -> api.http" in done.stdout


def test_the_http_face_importing_the_drain_breaks_its_contract(tree: Path):
    (tree / "api" / "drains.py").write_text("from drainer import drain\n")

    done = lint_imports(tree)

    assert done.returncode != 0
    assert "The HTTP face does not drain BROKEN" in done.stdout
    assert "api.drains -> drainer.drain" in done.stdout


def test_building_a_key_outside_buffer_breaks_the_key_contract(tree: Path):
    (tree / "sweep" / "peek.py").write_text("from buffer.keys import ShardKeys\n")

    done = lint_imports(tree)

    assert done.returncode != 0
    assert "Only buffer builds keys and calls scripts BROKEN" in done.stdout
    assert "sweep.peek -> buffer.keys" in done.stdout


def test_writing_through_staging_outside_the_engine_breaks_the_staging_contract(tree: Path):
    # Inside runs too: the layers contract cannot see it, this one must.
    (tree / "runs" / "fast_insert.py").write_text("def go() -> None:\n    from runs.staging import insert_one\n")

    done = lint_imports(tree)

    assert done.returncode != 0
    assert "Only the engine writes rows through staging BROKEN" in done.stdout
    assert "runs.fast_insert -> runs.staging" in done.stdout
