"""Operators' switches — pause/resume draining for an org or env, close/open an env's intake — as one service
for the admin's buffer pages and ``manage.py mollifier_buffer`` (docs/operations.md#admin-screens).

Thin over ``Buffer.pause/resume/close_intake/open_intake``; adds what both faces need: a scope resolved from
ids or slugs (``org-slug`` or ``org-slug/env-slug``), a plain sentence saying what changed, and the list of
switched orgs and envs by name for the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from buffer.buffer import Buffer
from runs.models import Environment, Organization
from sweep import audit


class Action(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CLOSE = "close"
    OPEN = "open"

    @property
    def asks_first(self) -> bool:
        """Pause and close stop work: the admin shows a confirmation step first."""
        return self in (Action.PAUSE, Action.CLOSE)


class UnknownScope(ValueError):
    """No such org or env (the message names what was asked for)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """An org (``env is None``: org-wide) or one of its envs."""

    org: Organization
    env: Environment | None = None

    @property
    def org_id(self) -> int:
        return self.org.pk

    @property
    def env_id(self) -> int | None:
        return None if self.env is None else self.env.pk

    def __str__(self) -> str:
        return f"org {self.org.slug}" if self.env is None else f"env {self.org.slug}/{self.env.slug}"


def scope_of(org_id: int, env_id: int | None = None) -> Scope:
    """The scope of ids; ``UnknownScope`` if the org (or the env, within that org) does not exist."""
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        raise UnknownScope(f"no organization with id {org_id}")
    if env_id is None:
        return Scope(org)
    env = Environment.objects.filter(pk=env_id, org=org).first()
    if env is None:
        raise UnknownScope(f"no environment with id {env_id} in org {org.slug}")
    return Scope(org, env)


def parse_env(text: str) -> Scope:
    """An env named by id (``42``) or by ``org-slug/env-slug``."""
    if text.isdigit():
        org_id = Environment.objects.filter(pk=int(text)).values_list("org_id", flat=True).first()
        if org_id is None:
            raise UnknownScope(f"no such environment: {text}")
        return scope_of(org_id, int(text))
    org_slug, sep, env_slug = text.partition("/")
    if not sep or not org_slug or not env_slug:
        raise UnknownScope(f"an environment is an id or org-slug/env-slug, not {text!r}")
    env = Environment.objects.select_related("org").filter(org__slug=org_slug, slug=env_slug).first()
    if env is None:
        raise UnknownScope(f"no such environment: {text}")
    return Scope(env.org, env)


def parse_org(text: str) -> Scope:
    """An org named by id (``7``) or slug."""
    orgs = Organization.objects.all()
    org = (orgs.filter(pk=int(text)) if text.isdigit() else orgs.filter(slug=text)).first()
    if org is None:
        raise UnknownScope(f"no such organization: {text}")
    return Scope(org)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a switch did: the sentence (``"env acme/prod paused"``, ``"… was already paused"``) and whether
    anything changed (the admin says a no-op as a warning, not a success)."""

    said: str
    changed: bool

    def __str__(self) -> str:
        return self.said


def already(buffer: Buffer, action: Action, scope: Scope) -> bool:
    """Whether ``scope`` is already as ``action`` would leave it (the confirmation page says so: a page drawn
    before another operator threw the same switch)."""
    s = buffer.switches(buffer.shard_for(scope.org_id))
    if action in (Action.CLOSE, Action.OPEN):
        return (scope.env_id in s.closed_envs) is (action is Action.CLOSE)
    on = scope.org_id in s.paused_orgs if scope.env_id is None else scope.env_id in s.paused_envs
    return on is (action is Action.PAUSE)


def apply(buffer: Buffer, action: Action, scope: Scope, *, user: str, source: str, reason: str = "") -> Outcome:
    """Throw the switch and record it in the audit trail (``sweep.audit``: ``user``, ``source`` admin|cli,
    ``reason``); returns what happened. Close and open need an env."""
    if action in (Action.CLOSE, Action.OPEN):
        if scope.env is None:
            raise UnknownScope("closing or opening the intake needs an environment, not an org")
        switch = buffer.close_intake if action is Action.CLOSE else buffer.open_intake
        changed = switch(org_id=scope.org_id, env_id=scope.env.pk)
        state = "closed" if action is Action.CLOSE else "open"
        said = f"{scope} intake {state}" if changed else f"{scope} intake was already {state}"
        name = f"{action} intake"
    else:
        toggle = buffer.pause if action is Action.PAUSE else buffer.resume
        changed = toggle(org_id=scope.org_id, env_id=scope.env_id)
        said = f"{scope} {action}d" if changed else f"{scope} was already {action}d"
        name = str(action)
    where = audit.Scope(org_ids=(scope.org_id,), env_ids=() if scope.env_id is None else (scope.env_id,))
    audit.record(user=user, action=name, source=source, scope=where, reason=reason,
                 counts={"changed": int(changed), "already": int(not changed)})  # fmt: skip
    return Outcome(said, bool(changed))


@dataclass(frozen=True, slots=True)
class Switched:
    """Every paused org, paused env and closed env, by name (the dashboard's list); unknown ids (a tenant
    deleted while switched) are kept as bare ids."""

    paused_orgs: list[tuple[int, Organization | None]]
    paused_envs: list[tuple[int, int, Environment | None]]  # (org_id, env_id, env)
    closed_envs: list[tuple[int, int, Environment | None]]


def switched(buffer: Buffer) -> Switched:
    """One round trip per shard (``Buffer.switches``) for the shards that have any switch on (``counts``, the
    sizes from ``Buffer.switch_counts``), and two queries for the names."""
    org_ids: set[int] = set()
    paused_env_ids: set[int] = set()
    closed_env_ids: set[int] = set()
    for shard, (orgs, envs, closed) in enumerate(buffer.switch_counts()):
        if orgs or envs or closed:
            s = buffer.switches(shard)
            org_ids |= s.paused_orgs
            paused_env_ids |= s.paused_envs
            closed_env_ids |= s.closed_envs
    orgs_by_id = Organization.objects.in_bulk(org_ids)
    envs_by_id = Environment.objects.select_related("org").in_bulk(paused_env_ids | closed_env_ids)

    def named(ids: set[int]) -> list[tuple[int, int, Environment | None]]:
        rows = [(envs_by_id[i].org_id if i in envs_by_id else 0, i, envs_by_id.get(i)) for i in ids]
        return sorted(rows, key=lambda r: (str(r[2] or ""), r[1]))

    return Switched(
        paused_orgs=sorted(((i, orgs_by_id.get(i)) for i in org_ids), key=lambda r: (str(r[1] or ""), r[0])),
        paused_envs=named(paused_env_ids),
        closed_envs=named(closed_env_ids),
    )
