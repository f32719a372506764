"""The beat lease (docs/architecture.md#beat-lease) against real Redis: one holder at a time, a larger epoch at
every taking, renewal only of one's own taking; a beat sends only inside its lease by its own clock; a tick sent
under an older epoch is dropped by the task; the gauges and the dashboard name the active beat.
The processes themselves (two beats, a kill, a pause) are in ``test_beat_processes.py``."""

from __future__ import annotations

import time

import pytest
import redis
from django.urls import reverse

from buffer.buffer import Buffer
from drainer import tasks
from drainer.beat import EPOCH_HEADER, BeatLease
from tests.buffer.test_memory_pressure import fill
from tests.redis_servers import redis_server
from tests.sweep.test_metrics import scrape, value


def take(buffer, holder: str, epoch: int = 0, ttl_ms: int = 5_000):
    return buffer.take_beat_lease(holder, held_epoch=epoch, ttl_ms=ttl_ms, now_ms=1_000)


def test_one_holder_at_a_time_and_a_renewal_keeps_the_epoch(buffer):
    first = take(buffer, "a:1")
    assert (first.holder, first.epoch) == ("a:1", 1)

    assert take(buffer, "b:2") == first  # held: b is told who holds it, and takes nothing
    assert take(buffer, "a:1", epoch=1) == first  # a's renewal of its own taking
    assert buffer.beat_epoch() == 1


def test_a_lapsed_lease_goes_to_the_next_taker_under_a_larger_epoch_and_the_old_holder_cannot_renew(buffer):
    take(buffer, "a:1", ttl_ms=50)
    time.sleep(0.1)  # a's lease lapses (it froze)

    second = take(buffer, "b:2")
    assert (second.holder, second.epoch) == ("b:2", 2)
    assert take(buffer, "a:1", epoch=1).holder == "b:2"  # a, resumed, does not get it back
    assert buffer.beat_epoch() == 2


def test_release_gives_up_only_the_callers_own_taking(buffer):
    take(buffer, "a:1")
    assert not buffer.release_beat_lease("b:2", epoch=1)
    assert not buffer.release_beat_lease("a:1", epoch=7)
    assert buffer.beat_lease().holder == "a:1"

    assert buffer.release_beat_lease("a:1", epoch=1)
    assert buffer.beat_lease() is None
    assert take(buffer, "b:2").epoch == 2  # the counter survives a release


class Clock:
    """A monotonic clock the test moves by hand (the lease's TTL in Redis is real and long)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_beat_may_send_only_inside_its_lease_by_its_own_clock(buffer):
    clock = Clock()
    lease = BeatLease(buffer, holder="a:1", ttl_ms=10_000, renew_ms=2_000, clock=clock)
    lease.renew_if_due()
    assert lease.current_epoch() == 1
    assert lease.wait_s() == 2.0

    clock.now += 8.9  # past the renew interval, not renewed (say, frozen): still inside 90 % of the TTL
    assert lease.current_epoch() == 1
    clock.now += 0.2  # past 9 s = TTL less a tenth: it stops sending, whatever Redis still holds
    assert lease.current_epoch() == 0

    lease.renew_if_due()  # its own taking is still in Redis (the TTL there is real): renewed, same epoch
    assert lease.current_epoch() == 1


def test_a_standby_does_not_send_and_takes_over_when_the_lease_is_released(buffer):
    clock = Clock()
    active = BeatLease(buffer, holder="a:1", ttl_ms=10_000, renew_ms=2_000, clock=clock)
    standby = BeatLease(buffer, holder="b:2", ttl_ms=10_000, renew_ms=2_000, clock=clock)
    active.renew_if_due()
    standby.renew_if_due()
    assert (active.current_epoch(), standby.current_epoch()) == (1, 0)

    active.release()
    clock.now += 1.0
    standby.renew_if_due()  # not due yet: the standby tries every renew interval
    assert standby.current_epoch() == 0
    clock.now += 1.0
    standby.renew_if_due()
    assert (active.current_epoch(), standby.current_epoch()) == (0, 2)


@pytest.fixture
def own_redis(tmp_path, settings, mollifier_settings):
    """A ``redis-server`` of this test's own (``noeviction``) as the buffer's Redis: to fill it, or to kill it."""
    with redis_server(tmp_path / "redis", "--maxmemory-policy", "noeviction") as server:
        settings.REDIS_URL = server.url
        settings.BUFFER_REDIS_URL = ""
        mollifier_settings(KEY_PREFIX="beat", SHARDS=1)
        yield server


own_server = pytest.mark.single_redis("points REDIS_URL at a redis-server of its own")


@own_server
def test_the_lease_is_taken_and_renewed_when_redis_is_at_maxmemory(own_redis):
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 300_000)
    fill(client)  # every plain write is refused now; the drain (which frees memory) must still be sent ticks
    client.close()
    buffer = Buffer.from_settings()

    assert take(buffer, "a:1").epoch == 1
    assert take(buffer, "a:1", epoch=1).epoch == 1
    assert buffer.beat_lease().holder == "a:1"


@own_server
def test_a_beat_that_cannot_reach_redis_keeps_sending_only_until_its_lease_would_lapse(own_redis):
    clock = Clock()
    lease = BeatLease(Buffer.from_settings(), holder="a:1", ttl_ms=10_000, renew_ms=2_000, clock=clock)
    lease.renew_if_due()
    own_redis.kill()

    clock.now += 2.0
    lease.renew_if_due()  # refused connection: logged, not raised; tried again sooner than the renew interval
    assert lease.current_epoch() == 1 and lease.wait_s() == 0.5
    clock.now += 7.1  # 9.1 s after the last renewal was asked for: a standby may hold it by now
    lease.renew_if_due()
    assert lease.current_epoch() == 0


def test_a_tick_sent_under_an_older_epoch_is_dropped_and_the_current_one_runs(buffer, mollifier_settings):
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=False)  # the tick then only stamps its liveness: no Postgres
    take(buffer, "a:1")
    buffer.release_beat_lease("a:1", epoch=1)
    take(buffer, "b:2")  # epoch 2: a's messages are stale

    stale = tasks.fan_out.apply(headers={EPOCH_HEADER: 1})
    assert stale.result is None
    assert buffer.fan_out_last_tick_ms() is None  # it did nothing, not even the liveness stamp

    current = tasks.fan_out.apply(headers={EPOCH_HEADER: 2})
    assert current.result == []
    assert buffer.fan_out_last_tick_ms() is not None


def test_an_unstamped_tick_runs_as_before(buffer, mollifier_settings):
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=False)
    take(buffer, "a:1")
    assert tasks.fan_out.apply().result == []
    assert buffer.fan_out_last_tick_ms() is not None


def test_the_gauges_name_the_active_beat_and_its_epoch(buffer):
    assert "mollifier_beat_active_info" not in scrape(buffer)  # no beat holds it: no sample
    assert value(scrape(buffer), "mollifier_beat_lease_epoch") == 0

    take(buffer, "host-a:41")

    samples = scrape(buffer)
    assert value(samples, "mollifier_beat_active_info", beat="host-a:41") == 1
    assert value(samples, "mollifier_beat_lease_epoch") == 1


@pytest.mark.django_db
def test_the_dashboard_names_the_active_beat(admin_client, buffer, mollifier_settings):
    dashboard = reverse("buffer_admin:dashboard")
    assert "beat: <strong>lease off (every beat started ticks)" in admin_client.get(dashboard).content.decode()

    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True, BEAT_LEASE_ENABLED=True)
    assert "beat: <strong>none holds the lease" in admin_client.get(dashboard).content.decode()

    buffer.take_beat_lease("<b>host</b>:7", held_epoch=0, ttl_ms=5_000, now_ms=int(time.time() * 1000) - 3_000)
    page = admin_client.get(dashboard).content.decode()
    assert "beat: <strong>&lt;b&gt;host&lt;/b&gt;:7, lease epoch 1, ticking for 3 s" in page
