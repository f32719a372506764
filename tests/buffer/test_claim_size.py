"""What one idempotency or request claim may cost in Redis, whatever the key's length (docs/operations.md#buffer-
memory): a key longer than ``LITERAL_KEY_MAX_BYTES`` is named by its SHA-256, so a 2,048-character key's claim
costs what a short one's does."""

from __future__ import annotations

from buffer.keys import LITERAL_KEY_MAX_BYTES, ShardKeys, b64u
from buffer.values import IdemRef
from tests.buffer.test_accept import ENV, ORG

LONG = "k" * 2_048


def test_a_long_keys_claim_costs_no_more_than_a_short_ones(buffer):
    for key in ("a" * 36, LONG):
        result = buffer.accept(
            run_id=f"run_{len(key)}", env_id=ENV, org_id=ORG, snapshot="{}", now_ms=1_000,
            idempotency=IdemRef(ENV, "hello", key, 60_000), max_per_env=10,
        )  # fmt: skip
        assert result.status == "ACCEPTED"
    k = buffer.keys_for_org(ORG)
    short = buffer._client.memory_usage(k.idem(ENV, "hello", "a" * 36))
    long = buffer._client.memory_usage(k.idem(ENV, "hello", LONG))
    assert long <= short + 32, (short, long)  # before: 3,232 B against 184 B


def test_short_keys_keep_their_readable_name_and_long_ones_cannot_collide():
    k = ShardKeys("p", 0)
    short = "x" * LITERAL_KEY_MAX_BYTES
    assert k.idem(1, "t", short).endswith(":" + b64u(short))
    a, b = k.idem(1, "t", short + "a"), k.idem(1, "t", short + "b")
    assert a != b and len(a) < len(k.idem(1, "t", short))  # hashed: shorter than the longest literal
    assert k.req(1, "t", short + "a") != a
    assert all("~" not in b64u(chr(c) * 3) for c in range(32, 0x2FF))  # a hashed name cannot be a literal one
