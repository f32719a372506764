"""``Buffer.trigger`` (``lua/trigger.lua``): every branch of the one-round-trip trigger, and what each leaves
written (docs/architecture.md#trigger-path)."""

from __future__ import annotations

import multiprocessing

import pytest

from buffer.buffer import Buffer
from buffer.client import buffer_redis_url, client_for
from buffer.values import GateArgs, IdemRef, TriggerStatus
from tests.buffer.conftest import make_snapshot

ORG, ENV, TASK = 3, 7, "hello-world"
NOW = 1_000_000
ALWAYS = GateArgs(window_ms=1_000, threshold=0, hold_ms=5_000, enrolled=True)


def call(buffer: Buffer, run_id: str | None = None, *, req="r-1", idem="k-1", gate=ALWAYS, max_per_env=100,
         now_ms=NOW, env=ENV, idem_pass_ttl_ms=None, check_unclaimed=False):  # fmt: skip
    run_id, doc = make_snapshot(ORG, env, run_id=run_id)
    reply = buffer.trigger(
        run_id=run_id, env_id=env, org_id=ORG, task=TASK, now_ms=now_ms, request_key=req, request_ttl_ms=60_000,
        idempotency=IdemRef(env, TASK, idem, 30_000) if idem else None, gate=gate,
        snapshot=doc if gate is not None and gate.enrolled else "", max_per_env=max_per_env,
        idem_pass_ttl_ms=idem_pass_ttl_ms, check_unclaimed=check_unclaimed,
    )  # fmt: skip
    return run_id, reply


def holder(buffer: Buffer, kind: str, key: str, env: int = ENV) -> str | None:
    return buffer._client.get(buffer.keys_for_org(ORG).claim(kind, env, TASK, key))  # type: ignore[arg-type]


def counted(buffer: Buffer) -> int:
    return int(buffer._client.hget(buffer.keys_for_org(ORG).rate(ENV), "count") or 0)


def entries(buffer: Buffer) -> list[str]:
    return list(buffer._client.scan_iter(match=f"{buffer.prefix}:*:e:*"))


def test_a_fresh_trigger_is_accepted_with_both_keys_bound_to_it(buffer):
    run_id, reply = call(buffer)
    assert (reply.status, reply.depth, reply.tripped, reply.count) == (TriggerStatus.ACCEPTED, 1, True, 1)
    entry = buffer.get(run_id, org_id=ORG)
    assert entry is not None and entry.status == "QUEUED" and entry.env_id == ENV
    assert holder(buffer, "req", "r-1") == run_id and holder(buffer, "idem", "k-1") == run_id
    idem_ttl = buffer._client.pttl(buffer.keys_for_org(ORG).idem(ENV, TASK, "k-1"))
    assert 0 < idem_ttl <= 30_000
    assert ENV in buffer.envs(buffer.shard_for(ORG), ORG) and ORG in buffer.orgs(buffer.shard_for(ORG))


def test_a_request_key_held_by_another_run_stops_before_anything_is_written(buffer):
    first, _ = call(buffer)
    _, reply = call(buffer, idem="k-2")
    assert (reply.status, reply.holder, reply.count) == (TriggerStatus.REQ_HELD, first, None)
    assert holder(buffer, "idem", "k-2") is None
    assert counted(buffer) == 1 and len(entries(buffer)) == 1


def test_an_idempotency_key_held_by_another_run_holds_the_request_key_only(buffer):
    first, _ = call(buffer, req="r-1")
    second, reply = call(buffer, req="r-2")
    assert (reply.status, reply.holder) == (TriggerStatus.IDEM_HELD, first)
    assert holder(buffer, "req", "r-2") == second  # the caller settles the idempotency key and releases this
    assert holder(buffer, "idem", "k-1") == first
    assert counted(buffer) == 1 and len(entries(buffer)) == 1


def test_keys_already_held_by_the_same_run_are_ours_and_a_repeat_is_a_duplicate(buffer):
    """A call retried after its reply was lost (redis-py retries once) finds its own keys and entry."""
    run_id, _ = call(buffer)
    again, reply = call(buffer, run_id)
    assert again == run_id
    assert (reply.status, reply.count) == (TriggerStatus.DUPLICATE, 2)
    assert buffer.depth(buffer.shard_for(ORG), ENV) == 1


def test_a_skipped_gate_passes_through_uncounted_holding_the_request_key_and_only_checking_the_idempotency_key(
    buffer,
):
    """A trigger that can never be buffered writes no idempotency claim: its row's unique index answers."""
    run_id, reply = call(buffer, gate=None)
    assert (reply.status, reply.tripped, reply.count) == (TriggerStatus.PASS, False, None)
    assert holder(buffer, "req", "r-1") == run_id and holder(buffer, "idem", "k-1") is None
    assert counted(buffer) == 0 and entries(buffer) == []
    # a key a buffered run holds is still seen
    buffer._client.set(buffer.keys_for_org(ORG).claim("idem", ENV, TASK, "k-1"), "run_other")
    assert call(buffer, req="r-2", gate=None)[1].status is TriggerStatus.IDEM_HELD


def test_a_passed_through_trigger_that_could_be_buffered_claims_its_key_for_its_write_only(buffer):
    gate = GateArgs(window_ms=1_000, threshold=5, hold_ms=5_000, enrolled=True)
    run_id, reply = call(buffer, gate=gate, idem_pass_ttl_ms=5_000)
    assert reply.status is TriggerStatus.PASS and holder(buffer, "idem", "k-1") == run_id
    assert 0 < buffer._client.pttl(buffer.keys_for_org(ORG).claim("idem", ENV, TASK, "k-1")) <= 5_000


def test_a_trigger_to_be_buffered_whose_key_nobody_claims_stops_for_postgres_holding_only_the_request_key(buffer):
    run_id, reply = call(buffer, check_unclaimed=True)
    assert (reply.status, reply.depth, reply.count) == (TriggerStatus.IDEM_UNCLAIMED, 0, 1)
    assert holder(buffer, "req", "r-1") == run_id and holder(buffer, "idem", "k-1") is None
    assert entries(buffer) == []
    # without a key, or with the key claimed by this run already, it is accepted at once
    assert call(buffer, req="r-2", idem=None, check_unclaimed=True)[1].status is TriggerStatus.ACCEPTED
    buffer._client.set(buffer.keys_for_org(ORG).claim("idem", ENV, TASK, "k-3"), run_id)
    assert call(buffer, run_id, req="r-1", idem="k-3", check_unclaimed=True)[1].status is TriggerStatus.ACCEPTED


def test_below_the_threshold_the_gate_passes_through_then_trips(buffer):
    gate = GateArgs(window_ms=1_000, threshold=2, hold_ms=5_000, enrolled=True)
    replies = [call(buffer, req=f"r-{i}", idem=f"k-{i}", gate=gate)[1] for i in range(4)]
    assert [(r.status, r.count) for r in replies] == [
        (TriggerStatus.PASS, 1), (TriggerStatus.PASS, 2), (TriggerStatus.ACCEPTED, 3), (TriggerStatus.ACCEPTED, 4),
    ]  # fmt: skip
    # The hold outlasts the window: the next window's first trigger is still mollified.
    _, later = call(buffer, req="r-x", idem="k-x", gate=gate, now_ms=NOW + 1_000)
    assert (later.status, later.count) == (TriggerStatus.ACCEPTED, 1)
    # After the hold, the counter starts over below the threshold.
    _, after = call(buffer, req="r-y", idem="k-y", gate=gate, now_ms=NOW + 7_000)
    assert (after.status, after.tripped, after.count) == (TriggerStatus.PASS, False, 1)


def test_a_tripped_gate_of_an_org_not_enrolled_passes_through_as_shadow(buffer):
    _, reply = call(buffer, gate=GateArgs(window_ms=1_000, threshold=0, hold_ms=5_000, enrolled=False))
    assert (reply.status, reply.tripped, reply.count) == (TriggerStatus.PASS, True, 1)
    assert holder(buffer, "idem", "k-1") is None and entries(buffer) == []  # never buffered: checked, not claimed


def test_a_closed_intake_refuses_and_binds_no_key(buffer):
    buffer.close_intake(org_id=ORG, env_id=ENV)
    _, reply = call(buffer)
    assert (reply.status, reply.count) == (TriggerStatus.CLOSED, 1)
    assert holder(buffer, "req", "r-1") is None and holder(buffer, "idem", "k-1") is None
    assert entries(buffer) == []


def test_a_closed_intake_of_an_org_not_enrolled_reads_as_tripped_and_passes_through(buffer):
    """Shadow mode: the closed env is reported tripped ("would mollify"), and the trigger passes through."""
    buffer.close_intake(org_id=ORG, env_id=ENV)
    gate = GateArgs(window_ms=1_000, threshold=5, hold_ms=5_000, enrolled=False)
    run_id, reply = call(buffer, gate=gate)
    assert (reply.status, reply.tripped, reply.count) == (TriggerStatus.PASS, True, 1)
    assert holder(buffer, "idem", "k-1") is None and holder(buffer, "req", "r-1") == run_id


def test_a_closed_intake_does_not_matter_to_a_trigger_the_gate_skips(buffer):
    buffer.close_intake(org_id=ORG, env_id=ENV)
    _, reply = call(buffer, gate=None)
    assert (reply.status, reply.tripped) == (TriggerStatus.PASS, False)


def test_a_full_queue_refuses_at_the_exact_cap_and_binds_no_key(buffer):
    call(buffer, req="r-a", idem="k-a", max_per_env=2)
    call(buffer, req="r-b", idem="k-b", max_per_env=2)
    _, reply = call(buffer, req="r-c", idem="k-c", max_per_env=2)
    assert (reply.status, reply.depth) == (TriggerStatus.FULL, 2)
    assert holder(buffer, "req", "r-c") is None and holder(buffer, "idem", "k-c") is None
    assert buffer.depth(buffer.shard_for(ORG), ENV) == 2


def test_without_keys_only_the_gate_and_the_accept_run(buffer):
    run_id, reply = call(buffer, req=None, idem=None)
    assert reply.status == TriggerStatus.ACCEPTED
    assert [k for k in buffer._client.scan_iter(match=f"{buffer.prefix}:*") if ":req:" in k or ":idem:" in k] == []
    assert buffer.get(run_id, org_id=ORG) is not None


def test_a_call_that_can_accept_needs_its_snapshot(buffer):
    with pytest.raises(ValueError, match="snapshot"):
        buffer.trigger(
            run_id="run_x", env_id=ENV, org_id=ORG, task=TASK, now_ms=NOW, request_key=None, request_ttl_ms=1,
            idempotency=None, gate=ALWAYS, snapshot="", max_per_env=1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="env_id"):
        buffer.trigger(
            run_id="run_x", env_id=ENV, org_id=ORG, task=TASK, now_ms=NOW, request_key=None, request_ttl_ms=1,
            idempotency=IdemRef(ENV + 1, TASK, "k", 1), gate=None, snapshot="", max_per_env=1,
        )  # fmt: skip


def test_the_script_is_reloaded_after_a_script_flush(buffer):
    buffer._client.script_flush()
    _, reply = call(buffer)
    assert reply.status == TriggerStatus.ACCEPTED


def _race(prefix: str, redis_url: str, barrier, results, i: int) -> None:
    client, scripts = client_for(redis_url)  # a cluster client under make test-cluster
    buffer = Buffer(client, prefix=prefix, shards=4, scripts=scripts)
    barrier.wait()
    for round_ in range(20):
        # Even rounds: one request retried by all (the request key collides); odd rounds: different requests
        # with one idempotency key (the idempotency key collides).
        req = f"r-{round_}" if round_ % 2 == 0 else f"r-{round_}-{i}"
        _, reply = call(buffer, req=req, idem=f"k-{round_}")
        results.put((round_, reply.status.value))


@pytest.mark.slow
def test_concurrent_same_key_triggers_from_processes_make_one_run(buffer, settings):
    """Eight processes fire triggers with one key at once, twenty times over: each time exactly one accepts
    and every other sees the winner's key."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(buffer.prefix, buffer_redis_url(), barrier, results, i)) for i in range(8)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in range(8 * 20)]
    for proc in procs:
        proc.join(30)
    for round_ in range(20):
        statuses = sorted(status for r, status in outcomes if r == round_)
        assert statuses.count("ACCEPTED") == 1, statuses
        assert set(statuses) <= {"ACCEPTED", "REQ_HELD" if round_ % 2 == 0 else "IDEM_HELD"}, statuses
    assert buffer.depth(buffer.shard_for(ORG), ENV) == 20
