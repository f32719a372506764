"""The sweep app's admin, one package (docs/architecture.md#operator-admin). Django's autodiscovery imports
``sweep.admin``, so this module imports every module that registers a ``ModelAdmin``:

- ``stuck_entries``: the StuckEntry admin, the operators' repairs (registered);
- ``operator_actions``: the audit trail, read-only (registered);
- ``views`` and ``urls``: the buffer dashboard at ``/admin/buffer/`` (plain views, wired by
  ``mollifier_project.urls`` ahead of the admin site; nothing registered).
"""

from sweep.admin import operator_actions, stuck_entries

__all__ = ["operator_actions", "stuck_entries"]
