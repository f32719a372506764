"""The runs app's admin, one package (docs/architecture.md#operator-admin). Django's autodiscovery imports
``runs.admin``, so this module imports every module that registers a ``ModelAdmin``:

- ``model_admins``: tenants, API keys, runs, batches and alerts (the registered ``ModelAdmin`` classes);
- ``buffered``: runs that exist only in Redis, in the TaskRun admin (a mixin of ``TaskRunAdmin``);
- ``deletion``: deleting an org or env with buffered runs, nothing lost (a mixin of the tenant admins).
"""

from runs.admin import buffered, deletion, model_admins

__all__ = ["buffered", "deletion", "model_admins"]
