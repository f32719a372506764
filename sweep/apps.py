from django.apps import AppConfig


class SweepConfig(AppConfig):
    """The stale sweep: finds entries that sit in the buffer too long and raises an alertable gauge."""

    name = "sweep"

    def ready(self) -> None:
        # Deletions in the runs admin that dead-letter buffered runs go in the audit trail (sweep.audit).
        from runs.signals import envs_deleted_with_buffered_runs
        from sweep import audit

        envs_deleted_with_buffered_runs.connect(audit.on_envs_deleted, dispatch_uid="sweep.audit.on_envs_deleted")
