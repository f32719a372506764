"""Drain fairness (docs/architecture.md#drain): who gets served in a round, with real Redis and Postgres, and the pure split.

Rounds are driven one at a time (``drain.run_round``) so each assertion is about one round; the org and
env cursors are the durable ones in Redis. Budgets are small so the numbers are easy to read.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from drainer import drain
from drainer.fairness import max_min_split, rotate_from
from drainer.limits import DrainLimits
from runs.ids import new_run_id
from runs.models import TaskRun
from runs.signals import run_created
from tests.factories import EnvironmentFactory, OrganizationFactory, SnapshotFactory
from tests.redis_servers import buffer_redis_client

NOW_MS = 1_700_000_000_000


def fill(park, env, n: int) -> list[str]:
    return park(*(SnapshotFactory(env=env) for _ in range(n)), now_ms=NOW_MS)


def rows_by_env() -> Counter[int]:
    return Counter(TaskRun.objects.values_list("env_id", flat=True))


# ------------------------------------------------------------------------------ rounds, real services


@pytest.mark.django_db
def test_light_env_is_served_in_first_round_despite_heavy_backlog(buffer, park, mollifier_settings):
    cfg = mollifier_settings(ROUND_BUDGET=100, MAX_ORGS_PER_ROUND=10)
    heavy = EnvironmentFactory()  # created first: its org sorts first, so it is ahead in the org order
    light = EnvironmentFactory()
    assert heavy.org_id < light.org_id
    fill(park, heavy, 10_000)
    light_ids = fill(park, light, 5)

    report = drain.run_round(buffer, shard=0, limits=DrainLimits.from_settings(cfg), now_ms=NOW_MS)

    assert set(TaskRun.objects.filter(env=light).values_list("id", flat=True)) == set(light_ids)
    assert report.leased == report.created == 100  # the light env's unused share went to the heavy one
    assert TaskRun.objects.filter(env=heavy).count() == 95
    assert buffer.depth(0, heavy.id) == 10_000 - 95


@pytest.mark.django_db
def test_org_with_twenty_busy_envs_gets_the_same_share_per_round_as_an_org_with_one(buffer, park, mollifier_settings):
    cfg = mollifier_settings(ROUND_BUDGET=41, MAX_ORGS_PER_ROUND=10)
    wide = OrganizationFactory()
    wide_envs = [EnvironmentFactory(org=wide) for _ in range(20)]
    narrow_env = EnvironmentFactory()
    for env in wide_envs:
        fill(park, env, 60)  # still wanting more than a share when the rotation comes back to it
    fill(park, narrow_env, 600)

    per_round: list[tuple[int, int]] = []  # (rows of the wide org, rows of the narrow org) per round
    served: list[int] = []  # the wide org's env served in each round
    before = rows_by_env()
    for _ in range(21):
        drain.run_round(buffer, shard=0, limits=DrainLimits.from_settings(cfg), now_ms=NOW_MS)
        after = rows_by_env()
        delta = after - before
        before = after
        wide_delta = {env: n for env, n in delta.items() if env != narrow_env.id}
        assert len(wide_delta) == 1, f"one env of the wide org per round, got {wide_delta}"
        served.extend(wide_delta)
        per_round.append((sum(wide_delta.values()), delta[narrow_env.id]))

    assert all(abs(wide_n - narrow_n) <= 1 and wide_n + narrow_n == 41 for wide_n, narrow_n in per_round), per_round
    in_order = sorted(env.id for env in wide_envs)
    assert served[:20] == in_order  # every env of the wide org once, in order …
    assert served[20] == in_order[0]  # … then the rotation wraps


@pytest.mark.django_db
def test_cursors_survive_a_restart(buffer, park, mollifier_settings):
    cfg = mollifier_settings(ROUND_BUDGET=5, MAX_ORGS_PER_ROUND=1)
    first = OrganizationFactory()
    first_envs = sorted((EnvironmentFactory(org=first) for _ in range(3)), key=lambda e: e.id)
    second_env = EnvironmentFactory()
    for env in [*first_envs, second_env]:
        fill(park, env, 10)

    def served_by(round_buffer: Buffer) -> set[int]:
        before = rows_by_env()
        drain.run_round(round_buffer, shard=0, limits=DrainLimits.from_settings(cfg), now_ms=NOW_MS)
        return set(rows_by_env() - before)

    assert served_by(buffer) == {first_envs[0].id}
    assert served_by(buffer) == {second_env.id}

    # A new process: its own connection and script registrations; only Redis remembers where we were.
    client = buffer_redis_client(**CLIENT_OPTIONS)
    try:
        restarted = Buffer(client, prefix=cfg.KEY_PREFIX, shards=1)
        assert served_by(restarted) == {first_envs[1].id}  # not first_envs[0]: the org and env cursors held
        assert served_by(restarted) == {second_env.id}
        assert served_by(restarted) == {first_envs[2].id}
    finally:
        client.close()


@pytest.mark.django_db
def test_choose_gives_each_org_one_env_and_splits_the_budget_by_demand(buffer, park, mollifier_settings):
    cfg = mollifier_settings(ROUND_BUDGET=12, MAX_ORGS_PER_ROUND=2)
    envs = [EnvironmentFactory() for _ in range(3)]
    for env, n in zip(envs, (2, 40, 40), strict=True):
        fill(park, env, n)

    first = drain.choose(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    second = drain.choose(buffer, shard=0, limits=DrainLimits.from_settings(cfg))

    # Round 1: the first two orgs; the 2-entry env takes 2 and leaves 10 to the other. Round 2 starts one
    # org later (choose only moves cursors; nothing was leased, so demands are unchanged).
    assert first == [(envs[0].org_id, envs[0].id, 2), (envs[1].org_id, envs[1].id, 10)]
    assert second == [(envs[1].org_id, envs[1].id, 6), (envs[2].org_id, envs[2].id, 6)]


@pytest.mark.django_db
def test_drain_shard_empties_every_env_whatever_the_mix(buffer, park, mollifier_settings):
    cfg = mollifier_settings(ROUND_BUDGET=50, MAX_ORGS_PER_ROUND=3)
    org = OrganizationFactory()
    envs = [EnvironmentFactory(org=org) for _ in range(3)] + [EnvironmentFactory() for _ in range(4)]
    sizes = [1, 7, 120, 3, 60, 0, 33]
    for env, n in zip(envs, sizes, strict=True):
        fill(park, env, n)

    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))

    assert report.created == sum(sizes)
    assert rows_by_env() == Counter({env.id: n for env, n in zip(envs, sizes, strict=True) if n})
    assert buffer.orgs(0) == []


@pytest.mark.django_db
def test_shard_task_stops_once_a_round_took_everything_queued(buffer, park, cfg):
    """A trickle of arrivals must not keep one shard's task looping over one-entry rounds while other
    shards' ticks expire: what arrives after a round emptied the shard waits for the next tick."""
    env = EnvironmentFactory()
    fill(park, env, 5)
    late: list[str] = []

    def arrive(**kwargs: object) -> None:  # a trigger lands while the round is materialising
        if not late:
            late.extend(fill(park, env, 1))

    run_created.connect(arrive, weak=False, dispatch_uid="fairness-late-arrival")
    try:
        report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    finally:
        run_created.disconnect(dispatch_uid="fairness-late-arrival")

    assert (report.rounds, report.created, report.emptied) == (1, 5, True)
    assert len(late) == 1 and buffer.depth(0, env.id) == 1
    assert (
        drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg)).created == 1
    )  # the next tick takes it


@pytest.mark.django_db
def test_shard_task_goes_on_while_a_round_could_not_take_everything(buffer, park, mollifier_settings):
    cfg = mollifier_settings(ROUND_BUDGET=100, MAX_ORGS_PER_ROUND=1)
    first, second = EnvironmentFactory(), EnvironmentFactory()
    org_with_two_envs = EnvironmentFactory(org=second.org)
    for env in (first, second, org_with_two_envs):
        fill(park, env, 3)

    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))

    assert report.created == 9 and report.emptied
    assert buffer.orgs(0) == []


def test_fan_out_lets_every_busy_shard_lead_equally_often(key_prefix, mollifier_settings):
    mollifier_settings(SHARDS=16)
    buffer = Buffer.from_settings()
    busy = [2, 3, 9]  # shard 9 follows five idle shards: it must not lead five times as often
    for shard in busy:
        org = next(o for o in range(1, 10_000) if buffer.shard_for(o) == shard)
        run_id, doc = new_run_id(), '{"v": 1}'
        buffer.accept(run_id=run_id, env_id=org, org_id=org, snapshot=doc, now_ms=0, idempotency=None, max_per_env=10)

    orders = [drain.shards_with_work(buffer, offset=tick) for tick in range(6)]

    assert all(sorted(order) == busy for order in orders)
    assert Counter(order[0] for order in orders) == {2: 2, 3: 2, 9: 2}


# ------------------------------------------------------------------------------------- pure functions


def _random_demands(rng: random.Random) -> list[int]:
    shape = rng.choice(("small", "mixed", "zeros", "huge"))
    n = rng.randrange(0, 30)
    if shape == "small":
        return [rng.randrange(0, 5) for _ in range(n)]
    if shape == "zeros":
        return [rng.choice((0, 0, rng.randrange(1, 50))) for _ in range(n)]
    if shape == "huge":
        return [rng.randrange(10_000, 1_000_000) for _ in range(n)]
    return [rng.choice((rng.randrange(1, 10), rng.randrange(10, 2000))) for _ in range(n)]


def test_max_min_split_holds_its_invariants_on_many_random_inputs():
    rng = random.Random(20240611)
    for _ in range(3000):
        demands = _random_demands(rng)
        budget = rng.choice((0, 1, rng.randrange(1, 100), rng.randrange(100, 5000)))
        shares = max_min_split(budget, demands)
        context = f"budget={budget} demands={demands} shares={shares}"
        assert len(shares) == len(demands), context
        assert sum(shares) == min(budget, sum(demands)), context
        assert all(0 <= s <= d for s, d in zip(shares, demands, strict=True)), context
        uncapped = [s for s, d in zip(shares, demands, strict=True) if s < d]
        if uncapped:
            assert max(uncapped) - min(uncapped) <= 1, context
            # max-min: an env left wanting is never more than one entry behind anyone else
            assert max(shares) <= min(uncapped) + 1, context


def test_a_single_busy_env_gets_the_whole_budget():
    assert max_min_split(1000, [50_000]) == [1000]
    assert max_min_split(1000, [0, 50_000, 0]) == [0, 1000, 0]
    assert max_min_split(1000, [3, 50_000, 2]) == [3, 995, 2]


def test_ten_busy_envs_get_a_tenth_each():
    assert max_min_split(1000, [10_000] * 10) == [100] * 10
    assert sorted(max_min_split(1003, [10_000] * 10)) == [100] * 7 + [101] * 3


def test_max_min_split_of_nothing_is_nothing():
    assert max_min_split(100, []) == []
    assert max_min_split(0, [5, 5]) == [0, 0]
    assert max_min_split(-3, [5]) == [0]


def test_rotate_from_starts_after_the_cursor_and_wraps():
    assert rotate_from([1, 3, 5], None, 2) == [1, 3]
    assert rotate_from([1, 3, 5], 1, 2) == [3, 5]
    assert rotate_from([1, 3, 5], 3, 10) == [5, 1, 3]
    assert rotate_from([1, 3, 5], 5, 2) == [1, 3]
    assert rotate_from([], 3, 2) == []


def test_rotate_from_tolerates_orgs_joining_and_leaving():
    # The cursor's org left: continue with the next one after it, not from the start.
    assert rotate_from([1, 5, 9], 3, 1) == [5]
    # Orgs joined before the cursor: they wait for the wrap instead of pushing the order back.
    assert rotate_from([0, 1, 2, 3, 5], 3, 2) == [5, 0]
    # The cursor is past every org that is left: wrap to the first.
    assert rotate_from([1, 3], 9, 1) == [1]


def test_rotate_from_visits_every_org_once_per_cycle_as_the_cursor_advances():
    orgs = [4, 8, 15, 16, 23, 42]
    cursor, seen = None, []
    for _ in range(len(orgs) * 2):
        first = rotate_from(orgs, cursor, 3)[0]
        seen.append(first)
        cursor = first
    assert seen == orgs * 2
