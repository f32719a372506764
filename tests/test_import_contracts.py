"""The import contracts of ``make lint`` (pyproject.toml ``[tool.importlinter]``): the layers, redis only inside
``buffer/``, the HTTP face apart from the drain; and no import cycle through ``api``, lazy imports included — kept
by the code, and failing on a deliberate violation in a copy of the tree."""

from __future__ import annotations

import json
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
    assert "Contracts: 4 kept, 0 broken." in done.stdout


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


# grimp (which import-linter runs on) reads every import statement, those inside functions included: a lazy
# import that only dodges a circle at run time still closes it here.
FIND_CYCLES = """
import json, sys
import grimp
graph = grimp.build_graph(*sys.argv[1:], cache_dir=None)
cycles = []
for module in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(module)):
        chain = graph.find_shortest_chain(importer=imported, imported=module)
        if chain:
            cycles.append([module, *chain])
print(json.dumps(cycles))
"""


def import_cycles(cwd: Path) -> list[list[str]]:
    """Every module of the product packages under ``cwd`` that imports itself through others, as the shortest
    such chain (``[a, b, …, a]``): one per module of a cycle and per import that leads into it."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    done = subprocess.run(
        [sys.executable, "-c", FIND_CYCLES, *PACKAGES], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_no_module_of_the_http_face_is_in_an_import_cycle():
    assert [cycle for cycle in import_cycles(ROOT) if cycle[0].startswith("api.")] == []


def test_a_lazy_import_that_closes_a_circle_in_the_http_face_is_found(tree: Path):
    with (tree / "api" / "openapi.py").open("a") as module:
        module.write("\n\ndef _routes():\n    from api.urls import urlpatterns\n\n    return urlpatterns\n")

    found = [cycle for cycle in import_cycles(tree) if cycle[0].startswith("api.")]

    assert ["api.openapi", "api.urls", "api.views.document", "api.openapi"] in found
