"""Request bodies of the trigger.dev v4 wire format (docs/api.md#trigger-a-task), validated with pydantic.

Unknown keys are ignored (the SDK grows fields); known keys are typed, so a wrong type fails with an
error that names the field (``options.maxAttempts: Input should be a valid integer``). Semantic checks
that need settings or the clock (payload size, durations, tag count) live in ``runs.trigger``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, field_validator

from runs.models import MAX_IDEMPOTENCY_KEY_LENGTH, MAX_TAG_LENGTH

Number = StrictInt | StrictFloat
MACHINES = ("micro", "small-1x", "small-2x", "medium-1x", "medium-2x", "large-1x", "large-2x")
MAX_BATCH_SIZE = 1000


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class QueueOption(_Lenient):
    name: str = Field(min_length=1, max_length=128)
    concurrencyLimit: StrictInt | None = None


class IdempotencyKeyOptions(_Lenient):
    key: str
    scope: Literal["run", "attempt", "global"] | None = None


class TriggerOptions(_Lenient):
    queue: QueueOption | None = None
    concurrencyKey: str | None = None
    delay: str | None = None
    ttl: str | Annotated[Number, Field(ge=0)] | None = None
    idempotencyKey: str | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    idempotencyKeyTTL: str | None = None
    idempotencyKeyOptions: IdempotencyKeyOptions | None = None
    tags: list[Annotated[str, Field(max_length=MAX_TAG_LENGTH)]] | None = None
    metadata: dict[str, Any] | None = None
    maxAttempts: Annotated[StrictInt, Field(ge=0)] | None = None
    maxDuration: Annotated[Number, Field(ge=0)] | None = None
    machine: Literal[MACHINES] | None = None  # type: ignore[valid-type]
    priority: Number | None = None
    payloadType: str = Field("application/json", max_length=64)
    parentRunId: str | None = None
    resumeParentOnCompletion: StrictBool | None = None
    debounce: dict[str, Any] | None = None
    oneTimeUseToken: str | None = None
    test: StrictBool | None = None

    @field_validator("queue", mode="before")
    @classmethod
    def _queue_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("concurrencyKey", mode="before")
    @classmethod
    def _concurrency_key(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TriggerBody(_Lenient):
    payload: Any = None
    context: Any = None
    options: TriggerOptions = Field(default_factory=TriggerOptions)


class BatchItem(_Lenient):
    index: Annotated[StrictInt, Field(ge=0)]
    task: str = Field(min_length=1, max_length=128)
    payload: Any = None
    options: TriggerOptions = Field(default_factory=TriggerOptions)


class CreateBatchBody(_Lenient):
    runCount: StrictInt
    taskIdentifiers: list[str] | None = None
    parentRunId: str | None = None
    resumeParentOnCompletion: StrictBool | None = None
    idempotencyKey: str | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    idempotencyKeyOptions: IdempotencyKeyOptions | None = None

    @field_validator("runCount")
    @classmethod
    def _run_count(cls, value: int) -> int:
        if value <= 0 or value > MAX_BATCH_SIZE:
            raise ValueError(f"must be between 1 and {MAX_BATCH_SIZE}")
        return value


class TagsBody(_Lenient):
    tags: list[Annotated[str, Field(max_length=MAX_TAG_LENGTH)]]

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ResetIdempotencyBody(_Lenient):
    taskIdentifier: str = Field(min_length=1, max_length=128)


def describe(error: ValidationError) -> str:
    """One line naming each failing field: ``options.maxAttempts: Input should be a valid integer``."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith(("function-", "constrained-")))
        parts.append(f"{loc}: {item['msg']}" if loc else item["msg"])
    return "; ".join(dict.fromkeys(parts))
