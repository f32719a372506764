"""The gate's trip script: a fixed window per env and a hold, on a clock the test controls."""

from __future__ import annotations

ORG, ENV = 1, 10
WINDOW, THRESHOLD, HOLD = 200, 3, 500


def trip(buffer, now_ms, *, env_id=ENV, threshold=THRESHOLD, hold_ms=HOLD):
    return buffer.trip(org_id=ORG, env_id=env_id, now_ms=now_ms, window_ms=WINDOW, threshold=threshold, hold_ms=hold_ms)


def test_counts_within_a_window_and_trips_only_above_the_threshold(buffer):
    assert [trip(buffer, 1_000 + i) for i in range(4)] == [(False, 1), (False, 2), (False, 3), (True, 4)]


def test_a_new_window_starts_counting_from_one(buffer):
    for i in range(3):
        trip(buffer, 1_000 + i)

    assert trip(buffer, 1_200) == (False, 1)


def test_windows_are_aligned_to_multiples_of_the_window(buffer):
    trip(buffer, 1_150)
    trip(buffer, 1_199)

    assert trip(buffer, 1_200)[1] == 1


def test_tripped_env_stays_tripped_for_the_hold_then_recovers(buffer):
    for i in range(4):
        trip(buffer, 1_000 + i)  # tripped at 1_003 → held until 1_503

    assert trip(buffer, 1_400) == (True, 1)
    assert trip(buffer, 1_502) == (True, 2)
    assert trip(buffer, 1_503) == (False, 3)


def test_a_continuing_storm_extends_the_hold(buffer):
    for i in range(4):
        trip(buffer, 1_000 + i)  # held until 1_503
    for i in range(4):
        trip(buffer, 1_400 + i)  # over the threshold again at 1_403 → held until 1_903

    assert trip(buffer, 1_800) == (True, 1)
    assert trip(buffer, 1_903) == (False, 2)


def test_a_caller_with_a_clock_behind_counts_into_the_current_window(buffer):
    trip(buffer, 1_250)

    assert trip(buffer, 1_150) == (False, 2)


def test_envs_are_counted_separately(buffer):
    for i in range(4):
        trip(buffer, 1_000 + i)

    assert trip(buffer, 1_004, env_id=ENV + 1) == (False, 1)


def test_threshold_zero_trips_every_evaluation(buffer):
    assert trip(buffer, 0, threshold=0, hold_ms=0) == (True, 1)
    assert trip(buffer, 10_000, threshold=0, hold_ms=0) == (True, 1)


def test_keys_get_cleanup_ttls(buffer):
    for i in range(4):
        trip(buffer, 1_000 + i)
    k = buffer.keys_for_org(ORG)

    assert buffer._client.hgetall(k.rate(ENV)) == {"window": "1000", "count": "4"}
    assert buffer._client.get(k.tripped(ENV)) == "1503"
    assert 0 < buffer._client.pttl(k.rate(ENV))
    assert 0 < buffer._client.pttl(k.tripped(ENV))
