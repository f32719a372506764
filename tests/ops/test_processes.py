"""Processes and Celery wiring for operators (docs/operations.md#processes, #celery): the sweep has a worker
of its own, Flower's broker page lists every queue, and the drain's once-a-second tasks send no events."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from flower.views import BaseHandler

from mollifier_project.celery import app

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, list[str]]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name] = shlex.split(command)
    return entries


def option(argv: list[str], *names: str) -> str:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {argv}")


def celery_workers() -> dict[str, list[str]]:
    return {name: argv for name, argv in procfile().items() if "celery" in argv and "worker" in argv}


@pytest.fixture(scope="module", autouse=True)
def tasks_loaded():
    app.loader.import_default_modules()  # registers the tasks (the worker does this at start)


def test_sweep_and_drain_run_in_separate_worker_processes():
    workers = celery_workers()
    queues = {name: set(option(argv, "-Q", "--queues").split(",")) for name, argv in workers.items()}

    sweep = [name for name, q in queues.items() if "sweep" in q]
    drain = [name for name, q in queues.items() if "drain" in q]
    assert len(sweep) == 1 and len(drain) == 1 and sweep != drain, queues
    assert queues[sweep[0]] == {"sweep"}  # a dead or busy drain worker never holds up stale detection
    assert queues[drain[0]] == {"drain", "default"}
    names = [option(argv, "-n", "--hostname") for argv in workers.values()]
    assert len(set(names)) == len(names)  # two workers on one host need distinct node names


def test_every_declared_queue_is_consumed_by_a_procfile_worker():
    consumed = {q for argv in celery_workers().values() for q in option(argv, "-Q", "--queues").split(",")}

    assert consumed == {q.name for q in app.conf.task_queues}


def test_queues_are_declared_with_their_own_exchange_and_routing_key():
    queues = {q.name: q for q in app.conf.task_queues}

    assert set(queues) == {"drain", "sweep", "default"}
    assert all(q.exchange.name == name and q.routing_key == name for name, q in queues.items())


@pytest.mark.parametrize(
    ("task", "queue"),
    [("drainer.fan_out", "drain"), ("drainer.drain_shard", "drain"), ("sweep.fan_out", "sweep"),
     ("sweep.sweep_shard", "sweep"), ("runs.record_run_alert", "default")],
)  # fmt: skip
def test_tasks_are_routed_to_their_queue(task, queue):
    route = app.amqp.router.route({}, task)

    assert route["queue"].name == queue
    assert route["queue"].exchange.name == queue and route["queue"].routing_key == queue


def test_flower_broker_page_lists_all_three_queues_before_workers_report():
    """Flower's own code: with no worker's active queues known yet it falls back to the configuration."""
    view = SimpleNamespace(application=SimpleNamespace(workers={}), capp=app)

    assert BaseHandler.get_active_queue_names(view) == ["default", "drain", "sweep"]


def test_flower_broker_page_lists_the_queues_the_workers_consume():
    workers = {
        "drain@h": {"active_queues": [{"name": "drain"}, {"name": "default"}]},
        "sweep@h": {"active_queues": [{"name": "sweep"}]},
    }
    view = SimpleNamespace(application=SimpleNamespace(workers=workers), capp=app)

    assert BaseHandler.get_active_queue_names(view) == ["default", "drain", "sweep"]


def test_the_drains_once_a_second_tasks_send_no_events_to_flower():
    assert app.tasks["drainer.fan_out"].send_events is False
    assert app.tasks["drainer.drain_shard"].send_events is False
    # What operators do want to see in Flower still shows.
    assert app.tasks["sweep.fan_out"].send_events is True
    assert app.tasks["sweep.sweep_shard"].send_events is True
    assert app.tasks["runs.record_run_alert"].send_events is True


def test_flower_keeps_a_bounded_task_list():
    (flower,) = [argv for argv in procfile().values() if "flower" in argv]

    assert 0 < int(option(flower, "--max_tasks")) <= 10_000


def test_operations_doc_lists_the_procfile_processes():
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc.split("## Processes", 1)[1].split("\n## ", 1)[0]

    listed = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert listed == set(procfile()), listed
