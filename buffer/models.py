"""What Postgres remembers of the buffer's Redis, so that a Redis that lost its data is noticed
(docs/architecture.md#buffer-epoch).

``BufferEpoch``: per key prefix and shard, the epoch the check last saw in Redis (``B epoch``). Redis can
forget everything (a restart without AOF, a failover to an empty replica, a FLUSHALL); Postgres is the
durable side of the system, so the comparison lives here. ``BufferDataLoss``: one row per check that found
a shard's epoch gone or replaced, open until an operator acknowledges it. Both are written only by
``drainer.epochs``.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q


class BufferEpoch(models.Model):
    prefix = models.CharField(max_length=200, help_text="KEY_PREFIX of the buffer.")
    shard = models.PositiveIntegerField()
    epoch = models.CharField(max_length=100, help_text="The shard's epoch in Redis: <random id>:<started ms>.")
    started_at = models.DateTimeField(help_text="When the check started this epoch in Redis.")
    confirmed_at = models.DateTimeField(help_text="When a check last saw it (refreshed about once a minute).")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prefix", "shard"], name="buffer_epoch_prefix_shard")]

    def __str__(self) -> str:
        return f"{self.prefix} shard {self.shard}: {self.epoch}"


class BufferDataLoss(models.Model):
    prefix = models.CharField(max_length=200)
    shards = ArrayField(models.PositiveIntegerField(), help_text="Shards whose epoch was gone or different.")
    detected_at = models.DateTimeField()
    lost_after = models.DateTimeField(help_text="The lost epochs were last seen then: the data went after this.")
    lost_since = models.DateTimeField(
        help_text="The oldest lost epoch's start: buffered runs accepted since then and not yet written are gone."
    )
    found = models.TextField(help_text="What the check found in place of each lost epoch.")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        verbose_name = "buffer data loss"
        verbose_name_plural = "buffer data losses"
        ordering = ["-detected_at"]
        indexes = [
            models.Index(fields=["detected_at"], condition=Q(acknowledged_at__isnull=True), name="data_loss_open"),
        ]

    def __str__(self) -> str:
        return f"data loss detected {self.detected_at:%Y-%m-%d %H:%M:%S} UTC ({len(self.shards)} shards)"

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None
