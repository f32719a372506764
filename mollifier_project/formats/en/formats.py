"""English (``en``, and so ``en-us``) formats: operators compare admin times with logs and metrics, which
need seconds, and read them across time zones, which needs the zone. Unset formats stay Django's."""

DATETIME_FORMAT = "Y-m-d H:i:s T"  # 2025-01-05 15:04:05 UTC
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
