"""factory-boy factories for tenants and snapshots."""

from __future__ import annotations

from datetime import UTC, datetime

import factory

from runs.ids import new_run_id
from runs.models import BatchTaskRun, Environment, Organization
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
