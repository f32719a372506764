"""The buffer app's admin, one package like every app's (docs/architecture.md#operator-admin). Django's
autodiscovery imports ``buffer.admin``, so this module imports every module that registers a ``ModelAdmin``:

- ``data_loss``: the buffer data losses, read-only.
"""

from buffer.admin import data_loss

__all__ = ["data_loss"]
