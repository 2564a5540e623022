"""Typed Pulumi components, one per part of the system.

Each component takes a frozen ``*Args`` dataclass, built from
:class:`ctfleet.settings.Settings` by its ``from_settings`` constructor, so the
names and attributes declared here are the ones the runtime reads.
"""

from infra.components.alerts import Alerts, AlertsArgs
from infra.components.queues import Queues, QueuesArgs
from infra.components.storage import Storage, StorageArgs
from infra.components.tables import Tables, TablesArgs

__all__ = [
    "Alerts",
    "AlertsArgs",
    "Queues",
    "QueuesArgs",
    "Storage",
    "StorageArgs",
    "Tables",
    "TablesArgs",
]
