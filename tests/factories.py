"""factory-boy factories for tenants and snapshots, and helpers that make runs the only legal way: through the engine."""

from __future__ import annotations

from datetime import UTC, datetime

import factory

from runs import engine
from runs.ids import new_run_id
from runs.models import BatchTaskRun, Environment, Organization, TaskRun
from runs.snapshot import Snapshot


def now_ms_precision() -> datetime:
    """Snapshots carry millisecond times; tests compare against values already at that precision."""
    now = datetime.now(tz=UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())
    feature_flags = factory.LazyFunction(lambda: {"mollifier": True})


class EnvironmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Environment

    org = factory.SubFactory(OrganizationFactory)
    slug = factory.Sequence(lambda n: f"env-{n}")
    type = Environment.Type.DEVELOPMENT


class BatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BatchTaskRun

    id = factory.Sequence(lambda n: f"batch_test{n:08d}")
    env = factory.SubFactory(EnvironmentFactory)
    run_count = 2
    sealed = True


class SnapshotFactory(factory.Factory):
    """A snapshot for ``env`` (pass ``env=...``); ids are fresh run ids."""

    class Meta:
        model = Snapshot
        exclude = ("env",)

    env = factory.SubFactory(EnvironmentFactory)
    id = factory.LazyFunction(new_run_id)
    env_id = factory.LazyAttribute(lambda o: o.env.id)
    org_id = factory.LazyAttribute(lambda o: o.env.org_id)
    task_identifier = "hello-world"
    created_at = factory.LazyFunction(now_ms_precision)
    payload = '{"json":{"n":1}}'
    payload_type = "application/super+json"
    tags = factory.LazyFunction(lambda: ["user_1"])


def trigger_run(env: Environment, *, buffered: bool = False, **snapshot_fields: object) -> TaskRun:
    """A run for ``env`` written by ``runs.engine.trigger`` (never by the ORM), with any snapshot fields."""
    snapshot = SnapshotFactory(env=env, **snapshot_fields)
    result = engine.trigger(snapshot, buffered=buffered)
    assert result.outcome is engine.Outcome.CREATED, result
    return TaskRun.objects.get(id=snapshot.id)


def fail_run(env: Environment, error: str = "boom", *, buffered: bool = True, **snapshot_fields: object) -> TaskRun:
    """A SYSTEM_FAILURE run for ``env`` written by ``runs.engine.create_failed_run`` (buffered by default,
    as the drainer writes them). Its alert is enqueued on commit, which a test transaction never reaches."""
    snapshot = SnapshotFactory(env=env, **snapshot_fields)
    result = engine.create_failed_run(snapshot, error, buffered=buffered)
    assert result.outcome is engine.Outcome.CREATED, result
    return TaskRun.objects.get(id=snapshot.id)
