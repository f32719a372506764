"""``StuckEntry``: one row per buffered run the stale sweep found stuck (docs/architecture.md#stale-sweep, #operator-admin).

Written only by ``sweep.services`` (upserted each time the sweep sees the entry, resolved once it has
drained or a repair of ``sweep.repair`` dealt with it); the operator admin lists the unresolved ones.

``org_id``/``env_id`` are plain ids, not foreign keys: a row must outlive its env (an env deleted while
its runs were buffered is one way entries end up dead-lettered), and the sweep writes rows without
looking tenants up.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q


class StuckKind(models.TextChoices):
    STALE = "STALE", "stale (queued too long)"
    EXPIRED_LEASE = "EXPIRED_LEASE", "expired lease (not reclaimed)"
    DEAD = "DEAD", "dead-lettered"


class StuckEntry(models.Model):
    run_id = models.CharField(max_length=40, unique=True)
    org_id = models.BigIntegerField()
    env_id = models.BigIntegerField()
    shard = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=StuckKind.choices)
    accepted_at = models.DateTimeField(help_text="When the trigger was accepted into the buffer.")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    resolved_at = models.DateTimeField(
        null=True, blank=True, help_text="When the sweep saw it drained, or a repair dealt with it."
    )

    class Meta:
        verbose_name = "stuck entry"
        verbose_name_plural = "stuck entries"
        # Operators' repairs of the buffer (requeue, redrive, materialise, fail, cancel): the StuckEntry
        # admin's actions. Listing the rows needs view_stuckentry; the buffer dashboard (/admin/buffer/) needs
        # view_buffer; the tenants' payloads, metadata, outputs and error texts need view_buffer_payloads
        # (docs/operations.md#admin-permissions).
        permissions = [
            ("repair_buffer", "Can repair buffered entries (requeue, redrive, materialise, fail, cancel)"),
            ("view_buffer", "Can view the buffer dashboard and its pages"),
            ("view_buffer_payloads", "Can view buffered payloads, metadata, outputs and error texts"),
        ]
        ordering = ["accepted_at"]
        indexes = [
            models.Index(fields=["env_id", "accepted_at"], name="stuck_env_accepted"),
            models.Index(fields=["org_id", "accepted_at"], name="stuck_org_accepted"),
            # The sweep's "which unresolved rows of this shard may have drained" query.
            models.Index(
                fields=["shard", "last_seen_at"], condition=Q(resolved_at__isnull=True), name="stuck_unresolved"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} ({self.kind})"

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None

    @property
    def age(self) -> timedelta:
        """How long the entry had been in the buffer when last seen (or when it drained)."""
        return self.age_at(self.resolved_at or self.last_seen_at)

    def age_at(self, now: datetime) -> timedelta:
        return now - self.accepted_at


class OperatorAction(models.Model):
    """One operator action on the buffer — a repair, a pause, a deletion that dead-lettered entries — from
    the admin or the command line (docs/runbook.md#audit). Written only by ``sweep.audit.record``; the admin
    lists the rows read-only. Tenants are plain ids plus the names they had then, so a row outlives them."""

    at = models.DateTimeField(db_index=True)
    user = models.CharField(max_length=150, db_index=True, help_text="Admin username, or the OS user / --as name.")
    source = models.CharField(max_length=16, choices=[("admin", "admin"), ("cli", "command line")])
    action = models.CharField(max_length=64, db_index=True)
    org_ids = models.JSONField(default=list)
    env_ids = models.JSONField(default=list)
    scope = models.TextField(blank=True, default="", help_text="Org and env names as they were, e.g. acme/prod (12).")
    run_ids = models.JSONField(default=list, help_text="The runs acted on, up to a cap (run_count says how many).")
    run_count = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict, help_text="What happened, outcome by outcome (sweep.repair.Repaired).")
    outcome = models.TextField(blank=True, default="")
    reason = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "operator action"
        verbose_name_plural = "operator actions"
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.user}: {self.action}"
