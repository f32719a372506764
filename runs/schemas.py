"""Request bodies of the trigger.dev v4 wire format (docs/api.md#trigger-a-task), validated with pydantic.

Unknown keys are ignored (the SDK grows fields); known keys are typed, so a wrong type fails with an
error that names the field (``options.maxAttempts: Input should be a valid integer``). Semantic checks
that need settings or the clock (payload size, durations, tag count) live in ``runs.trigger``.

Bad input is refused here too (docs/api.md#bad-input), before anything downstream could choke on it:

* every body (and every NDJSON line) nests arrays and objects at most ``MAX_JSON_DEPTH`` levels;
* numbers are finite (``allow_inf_nan=False``; ``json.loads`` lets ``NaN``, ``Infinity`` and ``1e999`` in);
* strings that are stored hold no NUL (Postgres text and jsonb refuse it) and no unpaired surrogate
  (UTF-8 cannot encode it): ``Text`` fields, metadata keys and values, the payload. Those errors have the
  type ``unstorable`` and answer 422, like every other value no row could hold (``is_unstorable``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from runs.durations import DurationError, idempotency_ttl
from runs.models import MAX_IDEMPOTENCY_KEY_LENGTH, MAX_TAG_LENGTH
from runs.packets import STORE_TYPE
from runs.packets import path_problem as packet_path_problem

MACHINES = ("micro", "small-1x", "small-2x", "medium-1x", "medium-2x", "large-1x", "large-2x")
MAX_BATCH_SIZE = 1000
MAX_JSON_DEPTH = 100  # levels of arrays and objects in a body or an NDJSON line, the body itself being level 1
UNSTORABLE = "unstorable"  # the pydantic error type of a value no row could hold (answered 422)

# Postgres text cannot hold NUL; UTF-8 cannot encode a lone surrogate. JSON lets both in ("\u0000", "\ud800").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_NUL = "must not contain a NUL character"


def _text_problem(text: str, *, nul_ok: bool = False) -> str | None:
    if text.isascii():  # O(1) in CPython, so the common case costs one memchr
        return _NUL if not nul_ok and "\x00" in text else None
    match = (_SURROGATE if nul_ok else _UNSTORABLE).search(text)
    if match is None:
        return None
    return _NUL if match.group() == "\x00" else "must not contain an unpaired surrogate"


def _unstorable(reason: str) -> PydanticCustomError:
    return PydanticCustomError(UNSTORABLE, "{reason}", {"reason": reason})


def _storable_text(value: Any) -> Any:
    if isinstance(value, str) and (problem := _text_problem(value)):
        raise _unstorable(problem)
    return value


# A string that is stored somewhere: no NUL, no unpaired surrogate (checked before pydantic's own str checks).
Text = Annotated[str, BeforeValidator(_storable_text)]
# A JSON number: int or float (StrictFloat takes both), finite under ``allow_inf_nan=False``.
Number = StrictFloat


def _render(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"  # escapes NUL and surrogates
    return out


def _json_problem(value: Any, *, nul_ok: bool) -> str | None:
    """What in a free JSON value (payload, metadata) no row could hold, and where; None if nothing."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        problem = None
        if isinstance(item, str):
            problem = _text_problem(item, nul_ok=nul_ok)
        elif isinstance(item, float) and not math.isfinite(item):
            problem = "must not contain NaN or Infinity"
        elif isinstance(item, dict):
            for key, child in item.items():
                key_problem = _text_problem(key, nul_ok=nul_ok) if isinstance(key, str) else None
                if key_problem:
                    return f"{key_problem} in the key {_render((*path, key))}"
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, index)) for index, child in enumerate(item))
        if problem:
            return f"{problem} at {_render(path)}" if path else problem
    return None


def _storable_payload(value: Any) -> Any:
    """A string payload is stored as is (no NUL, no surrogate); a JSON value is stored JSON-encoded, which
    escapes NUL but not a surrogate, and cannot encode NaN or Infinity as JSON."""
    problem = _text_problem(value) if isinstance(value, str) else _json_problem(value, nul_ok=True)
    if problem:
        raise _unstorable(problem)
    return value


def _storable_json(value: Any) -> Any:
    """A jsonb value (metadata): no NUL, no surrogate, no NaN or Infinity anywhere in it."""
    if problem := _json_problem(value, nul_ok=False):
        raise _unstorable(problem)
    return value


def too_deep(doc: Any) -> str | None:
    """Where ``doc`` nests arrays and objects deeper than ``MAX_JSON_DEPTH`` (the first one or two keys of
    the path, e.g. ``options.metadata``), or None. Iterative, so it cannot itself run out of stack."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(doc, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        children = item.items() if isinstance(item, dict) else enumerate(item)
        if depth > MAX_JSON_DEPTH:
            head: list[str] = []
            for part in path[:2]:
                if not isinstance(part, str):
                    break
                head.append(part)
            return _render(tuple(head)) or "Request body"
        stack.extend((child, depth + 1, (*path, key)) for key, child in children if isinstance(child, dict | list))
    return None


def nested_too_deep(where: str) -> str:
    return f"{where}: nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Body(_Lenient):
    """A whole request body or NDJSON line: its nesting is checked before any field is."""

    @model_validator(mode="before")
    @classmethod
    def _nesting(cls, data: Any) -> Any:
        if isinstance(data, dict | list) and (where := too_deep(data)) is not None:
            raise PydanticCustomError("too_deep", "{reason}", {"reason": nested_too_deep(where)})
        return data


class QueueOption(_Lenient):
    name: Text = Field(min_length=1, max_length=128)
    concurrencyLimit: StrictInt | None = None


class IdempotencyKeyOptions(_Lenient):
    key: Text
    scope: Literal["run", "attempt", "global"] | None = None


class TriggerOptions(_Lenient):
    queue: QueueOption | None = None
    concurrencyKey: Text | None = None
    delay: Text | None = None
    ttl: Text | Annotated[Number, Field(ge=0)] | None = None
    idempotencyKey: Text | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    idempotencyKeyTTL: Text | None = None
    idempotencyKeyOptions: IdempotencyKeyOptions | None = None
    tags: list[Annotated[Text, Field(max_length=MAX_TAG_LENGTH)]] | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_storable_json)] | None = None
    maxAttempts: Annotated[StrictInt, Field(ge=0)] | None = None
    maxDuration: Annotated[Number, Field(ge=0)] | None = None
    machine: Literal[MACHINES] | None = None  # type: ignore[valid-type]
    priority: Number | None = None
    payloadType: Text = Field("application/json", max_length=64)
    parentRunId: Text | None = None
    resumeParentOnCompletion: StrictBool | None = None
    debounce: dict[str, Any] | None = None
    oneTimeUseToken: Text | None = None
    test: StrictBool | None = None

    @field_validator("queue", mode="before")
    @classmethod
    def _queue_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("concurrencyKey", mode="before")
    @classmethod
    def _concurrency_key(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("idempotencyKeyTTL")
    @classmethod
    def _idempotency_ttl(cls, value: str | None) -> str | None:
        try:
            idempotency_ttl(value)  # a malformed value means the default; only one too long is refused
        except DurationError as exc:
            raise PydanticCustomError("duration", "{reason}", {"reason": str(exc)}) from None
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


Payload = Annotated[Any, AfterValidator(_storable_payload)]


def _store_path(payload: Any, options: TriggerOptions) -> None:
    """A payload of type ``application/store`` is a packet path (docs/api.md#packets): refuse one no packet has."""
    if options.payloadType == STORE_TYPE and (problem := packet_path_problem(payload)):
        raise PydanticCustomError("packet_path", "{reason}", {"reason": f"payload: a stored packet path {problem}"})


class TriggerBody(Body):
    payload: Payload = None
    context: Any = None
    options: TriggerOptions = Field(default_factory=TriggerOptions)

    @model_validator(mode="after")
    def _stored(self) -> TriggerBody:
        _store_path(self.payload, self.options)
        return self


class BatchItem(Body):
    index: Annotated[StrictInt, Field(ge=0)]
    task: Text = Field(min_length=1, max_length=128)
    payload: Payload = None
    options: TriggerOptions = Field(default_factory=TriggerOptions)

    @model_validator(mode="after")
    def _stored(self) -> BatchItem:
        _store_path(self.payload, self.options)
        return self


class CreateBatchBody(Body):
    runCount: StrictInt
    taskIdentifiers: list[Text] | None = None
    parentRunId: Text | None = None
    resumeParentOnCompletion: StrictBool | None = None
    idempotencyKey: Text | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    idempotencyKeyOptions: IdempotencyKeyOptions | None = None

    @field_validator("runCount")
    @classmethod
    def _run_count(cls, value: int) -> int:
        if value <= 0 or value > MAX_BATCH_SIZE:
            raise ValueError(f"must be between 1 and {MAX_BATCH_SIZE}")
        return value


class TagsBody(Body):
    tags: list[Annotated[Text, Field(max_length=MAX_TAG_LENGTH)]]

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ResetIdempotencyBody(Body):
    taskIdentifier: Text = Field(min_length=1, max_length=128)


def is_unstorable(error: ValidationError) -> bool:
    """Every failure is a value no row could hold (422), not a malformed body (400)."""
    return all(item["type"] == UNSTORABLE for item in error.errors())


def describe(error: ValidationError) -> str:
    """One line naming each failing field: ``options.maxAttempts: Input should be a valid integer``."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith(("function-", "constrained-")))
        parts.append(f"{loc}: {item['msg']}" if loc else item["msg"])
    return "; ".join(dict.fromkeys(parts))


# ------------------------------------------------------------- packets, reschedule, replay, metadata


class RescheduleBody(Body):
    delay: Text = Field(min_length=1, max_length=64)  # a duration ("1h") or an ISO date (the SDK sends a Date so)


def _tags_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class ReplayBody(Body):
    """``ReplayRunRequestBody``: every field optional; what is given overrides the original run's value."""

    payload: Payload = None
    payloadType: Literal["application/json", "application/super+json"] | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_storable_json)] | None = None
    tags: Annotated[list[Annotated[Text, Field(max_length=MAX_TAG_LENGTH)]], BeforeValidator(_tags_list)] | None = None
    queue: Text | None = Field(None, min_length=1, max_length=128)
    concurrencyKey: Text | None = None
    machine: Literal[MACHINES] | None = None  # type: ignore[valid-type]
    delay: Text | None = None
    ttl: Text | Annotated[StrictInt, Field(ge=0)] | None = None
    idempotencyKey: Text | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    idempotencyKeyTTL: Text | None = None
    maxAttempts: Annotated[StrictInt, Field(ge=1)] | None = None
    maxDuration: Annotated[Number, Field(ge=0)] | None = None
    priority: Number | None = None

    @model_validator(mode="after")
    def _super_json(self) -> ReplayBody:
        if self.payloadType == "application/super+json" and not isinstance(self.payload, str):
            raise PydanticCustomError(
                "super_json", "payload: must be a SuperJSON string when payloadType is application/super+json"
            )
        return self


_DANGEROUS_KEY_SEGMENTS = frozenset({"__proto__", "constructor", "prototype"})


def _metadata_key(key: str) -> str:
    """The SDK's rule: a ``$.`` path names something below the root and no segment is a prototype name."""
    if key.startswith("$."):
        if not re.findall(r"(?:[^.\\]|\\.)+", key)[1:]:
            raise ValueError("a JSON path key must name a segment below $")
        if any(part in _DANGEROUS_KEY_SEGMENTS for part in re.split(r"[.\[\]'\"\\]+", key)):
            raise ValueError("may not reference __proto__, constructor, or prototype")
    elif key == "__proto__":
        raise ValueError("may not reference __proto__, constructor, or prototype")
    return key


MetadataKey = Annotated[Text, Field(min_length=1, max_length=1024), AfterValidator(_metadata_key)]


class MetadataOperation(_Lenient):
    """One ``RunMetadataChangeOperation``: ``type`` decides which of ``key`` and ``value`` it needs."""

    type: Literal["update", "set", "delete", "append", "remove", "increment"]
    key: MetadataKey | None = None
    value: Annotated[Any, AfterValidator(_storable_json)] = None

    @model_validator(mode="after")
    def _shape(self) -> MetadataOperation:
        if self.type == "update":
            if not isinstance(self.value, dict):
                raise ValueError("value: an update operation's value must be an object")
            return self
        if self.key is None:
            raise ValueError(f"key: a {self.type} operation needs a key")
        if self.type == "increment" and (isinstance(self.value, bool) or not isinstance(self.value, int | float)):
            raise ValueError("value: an increment operation's value must be a number")
        return self


class MetadataBody(Body):
    """``UpdateMetadataRequestBody`` (the SDK's flushed metadata)."""

    metadata: Annotated[dict[str, Any], AfterValidator(_storable_json)] | None = None
    operations: list[MetadataOperation] | None = None
    parentOperations: list[MetadataOperation] | None = None
    rootOperations: list[MetadataOperation] | None = None
