from django.apps import AppConfig


class BufferConfig(AppConfig):
    """The Redis buffer (Lua scripts, key schema) and the gate that decides what goes into it."""

    name = "buffer"

    def ready(self) -> None:
        from buffer import checks  # noqa: F401  (registers the Redis system checks)
