"""The body of ``POST /api/v1/bulk-actions`` (docs/api.md#bulk-actions), validated with pydantic.

The filter is the run list's filter in JSON form; ``as_list_params`` turns it into the ``filter[...]``
query parameters ``runs.listing`` parses, so a bulk action selects exactly what ``runs.list`` with the same
filter lists. Unlike trigger bodies, unknown filter keys are refused: a misspelt key silently dropped would
widen a destructive selection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, model_validator

from runs.schemas import MACHINES, Body, Text

ApiStatus = Literal[
    "PENDING_VERSION", "QUEUED", "DEQUEUED", "EXECUTING", "WAITING", "COMPLETED", "CANCELED", "FAILED",
    "CRASHED", "SYSTEM_FAILURE", "DELAYED", "EXPIRED", "TIMED_OUT",
]  # fmt: skip
Machine = Literal[MACHINES]  # type: ignore[valid-type]
Str = Annotated[Text, Field(max_length=512)]
MAX_RUN_IDS = 100_000


class QueueRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["task", "custom"]
    name: Str


# A date: epoch milliseconds, or an ISO string (what JSON.stringify makes of a Date).
DateOrNumber = StrictFloat | datetime


class BulkFilter(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    status: ApiStatus | list[ApiStatus] | None = None
    taskIdentifier: Str | list[Str] | None = None
    version: Str | list[Str] | None = None
    from_: DateOrNumber | None = Field(default=None, alias="from")
    to: DateOrNumber | None = None
    period: Str | None = None
    bulkAction: Str | None = None
    tag: Str | list[Str] | None = None
    schedule: Str | None = None
    isTest: StrictBool | None = None
    batch: Str | None = None
    queue: QueueRef | list[QueueRef] | None = None
    machine: Machine | list[Machine] | None = None
    region: Str | list[Str] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> BulkFilter:
        if not any(_present(getattr(self, name)) for name in type(self).model_fields):
            raise ValueError("At least one filter must be provided")
        return self

    def as_list_params(self) -> dict[str, str]:
        """The ``filter[...]`` query parameters of the run list that select the same runs."""
        params: dict[str, str] = {}

        def put(name: str, value: Any) -> None:
            if _present(value):
                params[name] = ",".join(value) if isinstance(value, list) else str(value)

        put("filter[status]", self.status)
        put("filter[taskIdentifier]", self.taskIdentifier)
        put("filter[version]", self.version)
        put("filter[tag]", self.tag)
        put("filter[bulkAction]", self.bulkAction)
        put("filter[schedule]", self.schedule)
        put("filter[batch]", self.batch)
        put("filter[region]", self.region)
        put("filter[machine]", self.machine)
        put("filter[createdAt][period]", self.period)
        if self.isTest is not None:
            params["filter[isTest]"] = "true" if self.isTest else "false"
        for name, value in (("filter[createdAt][from]", self.from_), ("filter[createdAt][to]", self.to)):
            if value is not None:
                params[name] = str(int(value.timestamp() * 1000) if isinstance(value, datetime) else int(value))
        if self.queue:
            queues = self.queue if isinstance(self.queue, list) else [self.queue]
            params["filter[queue]"] = ",".join(f"task/{q.name}" if q.type == "task" else q.name for q in queues)
        return params


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, list):
        return any(_present(v) for v in value)
    if isinstance(value, str):
        return bool(value.strip())
    return True


class CreateBulkActionBody(Body):
    action: Literal["cancel", "replay"]
    filter: BulkFilter | None = None
    runIds: list[Annotated[Text, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=1, max_length=MAX_RUN_IDS
    )
    name: Text | None = Field(default=None, max_length=255)
    targetRegion: Text | None = None

    @model_validator(mode="after")
    def _one_selection(self) -> CreateBulkActionBody:
        if (self.filter is not None) + (self.runIds is not None) != 1:
            raise ValueError("Exactly one of filter or runIds must be provided")
        if self.action == "cancel" and self.targetRegion is not None:
            raise ValueError("targetRegion: only a replay takes a target region")
        return self


# The list's parameter names → the body's, for errors from ``runs.listing.parse_filter``.
FILTER_FIELD_NAMES = {
    "filter[createdAt][from]": "filter.from",
    "filter[createdAt][to]": "filter.to",
    "filter[createdAt][period]": "filter.period",
}


def body_field(list_param: str) -> str:
    """``filter[status]`` → ``filter.status``: how a body error names the field."""
    if list_param in FILTER_FIELD_NAMES:
        return FILTER_FIELD_NAMES[list_param]
    return list_param.replace("[", ".").replace("]", "")
