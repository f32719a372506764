"""``runs.listing``: one list over rows and buffered entries — same filters, one order, one cursor that
pages across both without gaps or repeats while entries drain between pages; bounded Redis work per page.
Real Postgres and Redis; the drain between pages is the real drain round."""

from __future__ import annotations

import base64
import dataclasses
import time
from datetime import timedelta

import pytest
from django.conf import settings

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from drainer.drain import run_round
from drainer.limits import DrainLimits
from mollifier_project.clock import from_ms
from runs import engine, listing
from runs.auth import EnvContext
from runs.ids import new_run_id
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from tests.factories import EnvironmentFactory, SnapshotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True)
    return Buffer.from_settings()


def ctx(env) -> EnvContext:
    return EnvContext(env.id, env.org_id, env.slug, env.type, env.org.slug, True)


def park(buffer: Buffer, snapshot) -> str:
    result = buffer.accept(
        run_id=snapshot.id, env_id=snapshot.env_id, org_id=snapshot.org_id, snapshot=to_snapshot(snapshot),
        now_ms=int(time.time() * 1000), idempotency=None, max_per_env=1_000_000,
    )  # fmt: skip
    assert result.status is AcceptStatus.ACCEPTED
    return snapshot.id


def mixed(buffer, env, n: int, *, start_ms: int, step_ms: int = 1, **fields) -> list[str]:
    """``n`` runs, every third a row and the rest buffered, created ``step_ms`` apart; ids newest first."""
    made = []
    for i in range(n):
        s = SnapshotFactory(env=env, created_at=from_ms(start_ms + i * step_ms), **fields)
        if i % 3 == 0:
            assert engine.trigger(s).outcome is engine.Outcome.CREATED
        else:
            park(buffer, s)
        made.append(s.id)
    return list(reversed(made))


def walk(env, buffer, params=None, *, size: int, between=None) -> tuple[list[str], int]:
    """Every page via ``next``; ``between()`` runs after each page. Returns ids in order and pages walked."""
    params = dict(params or {})
    params["page[size]"] = str(size)
    seen, pages = [], 0
    while True:
        out = listing.list_runs(ctx(env), params, buffer=buffer, now=from_ms(int(time.time() * 1000)))
        seen += [doc["id"] for doc in out["data"]]
        pages += 1
        if between:
            between()
        if "next" not in out["pagination"]:
            return seen, pages
        params["page[after]"] = out["pagination"]["next"]
        assert pages < 10_000


def test_rows_and_buffered_runs_are_one_newest_first_list(buffer):
    env = EnvironmentFactory()
    expected = mixed(buffer, env, 10, start_ms=1_700_000_000_000)
    out = listing.list_runs(ctx(env), {"page[size]": "100"}, buffer=buffer, now=from_ms(1_700_000_100_000))
    assert [d["id"] for d in out["data"]] == expected
    assert {d["status"] for d in out["data"]} == {"QUEUED"}
    assert all(d["env"] == {"id": str(env.id), "name": env.slug} for d in out["data"])
    row_doc = next(d for d in out["data"] if TaskRun.objects.filter(id=d["id"]).exists())
    buffered_doc = next(d for d in out["data"] if not TaskRun.objects.filter(id=d["id"]).exists())
    assert set(row_doc) == set(buffered_doc)  # the same list item shape from either side


def test_pages_cover_every_run_once_while_entries_drain_between_pages(buffer):
    env = EnvironmentFactory()
    expected = mixed(buffer, env, 90, start_ms=1_700_000_000_000)
    limits = dataclasses.replace(DrainLimits.from_settings(settings.MOLLIFIER), round_budget=7)
    drained_before = TaskRun.objects.filter(env=env).count()

    def drain_a_little():
        run_round(buffer, shard=0, limits=limits, now_ms=int(time.time() * 1000))

    seen, pages = walk(env, buffer, size=8, between=drain_a_little)
    assert seen == expected
    assert pages >= 11
    assert TaskRun.objects.filter(env=env).count() > drained_before  # the drain really moved runs mid-walk


def test_a_drained_run_keeps_its_position_to_the_millisecond(buffer):
    env = EnvironmentFactory()
    s = SnapshotFactory(env=env, created_at=from_ms(1_700_000_000_123))
    park(buffer, s)
    before = listing.list_runs(ctx(env), {}, buffer=buffer, now=from_ms(1_700_000_100_000))["data"][0]
    run_round(buffer, shard=0, limits=DrainLimits.from_settings(settings.MOLLIFIER), now_ms=int(time.time() * 1000))
    assert TaskRun.objects.get(id=s.id).created_at == s.created_at
    after = listing.list_runs(ctx(env), {}, buffer=buffer, now=from_ms(1_700_000_100_000))["data"][0]
    assert before["createdAt"] == after["createdAt"] == "2023-11-14T22:13:20.123Z"


def test_ties_on_created_at_are_broken_by_id_bytes_on_both_sides(buffer):
    env = EnvironmentFactory()
    at = from_ms(1_700_000_000_000)
    ids = [new_run_id() for _ in range(12)]
    for i, run_id in enumerate(ids):
        s = SnapshotFactory(env=env, id=run_id, created_at=at)
        if i % 2:
            engine.trigger(s)
        else:
            park(buffer, s)
    seen, _ = walk(env, buffer, size=5)
    assert seen == sorted(ids, key=lambda r: r.encode(), reverse=True)


def test_filters_apply_to_buffered_runs_as_to_rows(buffer):
    env = EnvironmentFactory()
    base = 1_700_000_000_000
    tagged = mixed(buffer, env, 6, start_ms=base, task_identifier="a", tags=["red"], queue="q1", machine="micro")
    other = mixed(buffer, env, 6, start_ms=base + 100, task_identifier="b", tags=["blue"])
    now = from_ms(base + 10_000)

    def ids(**params):
        out = listing.list_runs(ctx(env), {"page[size]": "100", **params}, buffer=buffer, now=now)
        return [d["id"] for d in out["data"]]

    assert ids(**{"filter[taskIdentifier]": "a"}) == tagged
    assert ids(**{"filter[tag]": "blue,green"}) == other
    assert ids(**{"filter[queue]": "q1"}) == tagged
    assert ids(**{"filter[queue]": "task/b"}) == other  # b's runs have no named queue
    assert ids(**{"filter[machine]": "micro,small-1x"}) == tagged
    assert ids(**{"filter[createdAt][from]": str(base + 100)}) == other
    assert ids(**{"filter[createdAt][to]": str(base + 5)}) == tagged
    assert ids(**{"filter[status]": "QUEUED"}) == other + tagged
    assert ids(**{"filter[status]": "COMPLETED"}) == []
    for nothing in ("filter[version]", "filter[schedule]", "filter[region]", "filter[bulkAction]"):
        assert ids(**{nothing: "x"}) == [], nothing  # never "everything": a bulk cancel by version must not hit all
    assert ids(**{"filter[isTest]": "true"}) == []
    assert ids(**{"filter[isTest]": "false"}) == other + tagged


def test_status_filter_sees_buffered_cancel_and_appended_tags(buffer):
    env = EnvironmentFactory()
    runs = mixed(buffer, env, 6, start_ms=1_700_000_000_000)
    buffered = [r for r in runs if not TaskRun.objects.filter(id=r).exists()]
    buffer.cancel(buffered[0], org_id=env.org_id, env_id=env.id, now_ms=1, reason="x")
    buffer.append_tags(buffered[1], org_id=env.org_id, env_id=env.id, tags=["late"], max_tags=10)
    now = from_ms(1_700_000_100_000)
    canceled = listing.list_runs(ctx(env), {"filter[status]": "CANCELED"}, buffer=buffer, now=now)["data"]
    assert [d["id"] for d in canceled] == [buffered[0]]
    late = listing.list_runs(ctx(env), {"filter[tag]": "late"}, buffer=buffer, now=now)["data"]
    assert [d["id"] for d in late] == [buffered[1]]


def test_a_filter_matching_no_buffered_entry_stops_on_its_bound_and_resumes(buffer):
    env = EnvironmentFactory()
    base = 1_700_000_000_000
    wanted = []
    n = listing.SCAN_BATCH * listing.MAX_SCAN_CALLS * 3
    for i in range(n):
        s = SnapshotFactory(env=env, created_at=from_ms(base + i), task_identifier="hit" if i % 700 == 0 else "miss")
        park(buffer, s)
        if i % 700 == 0:
            wanted.append(s.id)
    f = listing.parse_filter({"filter[taskIdentifier]": "hit"}, now=from_ms(base + n))
    first = listing.page(ctx(env), f, size=25, buffer=buffer, now=from_ms(base + n))
    assert first.scan_calls == listing.MAX_SCAN_CALLS
    assert first.next is not None and len(first.items) < len(wanted)
    seen, pages = walk(env, buffer, {"filter[taskIdentifier]": "hit"}, size=25)
    assert seen == list(reversed(wanted))
    assert pages >= 3


def test_page_before_goes_back_to_the_previous_page(buffer):
    env = EnvironmentFactory()
    expected = mixed(buffer, env, 20, start_ms=1_700_000_000_000)
    now = from_ms(1_700_000_100_000)
    first = listing.list_runs(ctx(env), {"page[size]": "6"}, buffer=buffer, now=now)
    second = listing.list_runs(
        ctx(env), {"page[size]": "6", "page[after]": first["pagination"]["next"]}, buffer=buffer, now=now
    )
    assert [d["id"] for d in second["data"]] == expected[6:12]
    back = listing.list_runs(
        ctx(env), {"page[size]": "6", "page[before]": second["pagination"]["previous"]}, buffer=buffer, now=now
    )
    assert [d["id"] for d in back["data"]] == expected[:6]
    assert "previous" not in back["pagination"]
    assert back["pagination"]["next"]


def test_another_envs_runs_are_never_listed(buffer):
    env, other = EnvironmentFactory(), EnvironmentFactory()
    mine = mixed(buffer, env, 5, start_ms=1_700_000_000_000)
    mixed(buffer, other, 5, start_ms=1_700_000_000_000)
    other_same_org = EnvironmentFactory(org=env.org)
    mixed(buffer, other_same_org, 5, start_ms=1_700_000_000_000)
    seen, _ = walk(env, buffer, size=3)
    assert seen == mine


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("filter[isTest]", "maybe"),
        ("filter[status]", "PENDING"),
        ("page[after]", "not-a-cursor"),
        ("filter[createdAt][period]", "1y"),
        ("page[size]", "101"),
    ],
)
def test_a_bad_query_names_its_parameter(buffer, param, value):
    env = EnvironmentFactory()
    with pytest.raises(listing.QueryError, match=param.replace("[", r"\[").replace("]", r"\]")):
        listing.list_runs(ctx(env), {param: value}, buffer=buffer, now=from_ms(1_700_000_000_000))


def test_a_cursor_of_the_rows_only_list_still_pages(buffer):
    env = EnvironmentFactory()
    expected = mixed(buffer, env, 6, start_ms=1_700_000_000_000)
    at = from_ms(1_700_000_000_002)  # expected[3] is the third run made
    old = base64.urlsafe_b64encode(f"{at.isoformat()}|{expected[3]}".encode()).decode().rstrip("=")
    out = listing.list_runs(ctx(env), {"page[after]": old}, buffer=buffer, now=at + timedelta(days=1))
    assert [d["id"] for d in out["data"]] == expected[4:]
