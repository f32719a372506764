"""Fair choice of what a drain round takes (docs/architecture.md#drain), as pure functions so they are easy to test.

Two levels: orgs of the shard in sorted order starting from a durable cursor that advances by one org
per round (at most ``max_orgs`` per round), and one env per org from a per-org cursor. The round's entry
budget is then split max-min fairly among the chosen envs: one busy env gets the whole budget, ten busy
envs a tenth each, and an env that wants less than its share gives the rest to the others.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def rotate_from(items: Sequence[int], after: int | None, limit: int) -> list[int]:
    """Up to ``limit`` of the sorted ``items``, starting with the first one greater than ``after``
    (wrapping). The cursor is an id, not a position, so orgs joining or leaving do not shift it."""
    if not items:
        return []
    start = 0 if after is None else bisect.bisect_right(items, after) % len(items)
    ordered = list(items[start:]) + list(items[:start])
    return ordered[:limit]


def max_min_split(budget: int, demands: Sequence[int]) -> list[int]:
    """Water-filling: visit demands smallest first; each takes min(demand, equal share of what is left).

    The result sums to min(budget, sum(demands)); no share exceeds its demand; two uncapped shares
    differ by at most one.
    """
    shares = [0] * len(demands)
    remaining = max(budget, 0)
    wanting = sorted((i for i, d in enumerate(demands) if d > 0), key=lambda i: (demands[i], i))
    for position, i in enumerate(wanting):
        give = min(demands[i], remaining // (len(wanting) - position))
        shares[i] = give
        remaining -= give
    return shares
