"""The Lua files are all registered with a contract header, and the key schema is stable."""

from __future__ import annotations

import re

import pytest

from buffer.keys import ShardKeys, b64u, shard_for
from buffer.scripts import LIB, LUA_DIR, Scripts, prelude, registered_source, source

LUA_NAMES = sorted(path.stem for path in LUA_DIR.glob("*.lua"))


def test_every_lua_file_is_registered_and_every_registered_script_has_a_file():
    assert sorted(Scripts.names()) == LUA_NAMES


@pytest.mark.parametrize("name", LUA_NAMES)
def test_lua_file_opens_with_a_contract_header(name):
    text = source(name)
    header = re.match(r"--\[\[(.*?)\]\]", text, re.S)
    assert header is not None, f"{name}.lua must open with a --[[ … ]] header"
    body = header.group(1)
    assert body.strip().startswith(f"{name} —"), f"{name}.lua header must start with '{name} — what it does'"
    for word in ("KEYS", "ARGV", "Returns", "Guarantees"):
        assert word in body, f"{name}.lua header does not mention {word}"


def test_a_registered_script_is_loaded_by_sha_on_first_call(buffer):
    buffer.get("run_x", org_id=1)
    assert buffer._client.script_exists(buffer._scripts.get.sha) == [True]


def test_shard_for_is_crc32_of_the_decimal_org_id():
    # Pinned values: a change here would strand every buffered entry in the wrong shard.
    assert [shard_for(org, 16) for org in (1, 2, 42, 12345)] == [7, 13, 8, 12]
    assert [shard_for(org, 4) for org in (1, 2, 4)] == [3, 1, 0]


def test_every_shard_key_carries_the_shard_hash_tag():
    k = ShardKeys("mollifier", 5)
    names = [
        k.orgs,
        k.org_envs(3),
        k.queue(7),
        k.entry("run_abc"),
        k.leases,
        k.retry,
        k.dead,
        k.idem(7, "task", "key"),
        k.req(7, "task", "key"),
        k.rate(7),
        k.tripped(7),
        k.cursor_orgs,
        k.cursor_envs,
        k.snapshot("run_abc"),
        k.queued,
        k.heads,
        k.index(7),
        k.drained_total,
        k.chart,
        k.chart_due,
    ]
    assert all(name.startswith("mollifier:{m5}:") for name in names)
    assert len(set(names)) == len(names)


def test_claim_keys_encode_task_and_key_so_separators_cannot_collide():
    k = ShardKeys("p", 0)
    assert k.idem(1, "a:b", "c") != k.idem(1, "a", "b:c")
    assert k.idem(1, "my-task", "key/1") == f"p:{{m0}}:idem:1:{b64u('my-task')}:{b64u('key/1')}"
    assert "=" not in b64u("x")
    assert k.idem(1, "t", "k") != k.req(1, "t", "k")


def test_unknown_claim_kind_is_refused_with_its_name():
    with pytest.raises(ValueError, match="claim kind"):
        ShardKeys("p", 0).claim("other", 1, "t", "k")  # type: ignore[arg-type]


def test_every_lib_file_is_in_the_prelude_and_opens_with_a_contract_header():
    assert sorted(LIB) == sorted((LUA_DIR / "lib").glob("*.lua"))
    for path in LIB:
        header = re.match(r"--\[\[(.*?)\]\]", path.read_text(encoding="utf-8"), re.S)
        assert header is not None and header.group(1).strip().startswith(f"{path.stem} —"), path.name


def test_every_script_is_registered_behind_the_prelude(buffer):
    text = "".join(path.read_text(encoding="utf-8") for path in LIB)
    assert prelude() == text
    for name in Scripts.names():
        assert registered_source(name) == text + source(name)
        assert getattr(buffer._scripts, name).script == registered_source(name)


def test_the_org_env_set_invariant_is_written_only_in_the_prelude():
    """Scripts join or leave the org/env sets through ``presence_join``/``presence_leave``, never by hand."""
    for name in LUA_NAMES:
        body = source(name)
        assert "SREM" not in body and "SADD" not in body, f"{name}.lua edits the org/env sets itself"
    presence = (LUA_DIR / "lib" / "presence.lua").read_text(encoding="utf-8")
    assert "local function presence_join" in presence and "local function presence_leave" in presence


def test_a_new_entry_is_written_only_by_the_entry_accept_lib_function():
    """One place writes an entry's fields and pushes it onto its queue, so what every new entry needs is
    added once (``lib/entry_accept.lua``)."""
    for name in LUA_NAMES:
        assert "'QUEUED', 'accepted_ms'" not in source(name), f"{name}.lua writes a new entry itself"
    lib = (LUA_DIR / "lib" / "entry_accept.lua").read_text(encoding="utf-8")
    assert "local function entry_accept(k, a)" in lib and "'QUEUED', 'accepted_ms'" in lib


def test_the_shard_counters_and_the_env_index_are_written_only_in_the_prelude():
    """Scripts keep the counters, heads and env index through the lib functions, never by hand."""
    for name in LUA_NAMES:
        body = source(name)
        for marker in ("'queued'", "'heads'", "'ix:'"):
            assert marker not in body, f"{name}.lua writes {marker} itself"
