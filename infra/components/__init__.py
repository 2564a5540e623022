"""Typed Pulumi components, one per part of the system.

Each component takes a frozen ``*Args`` dataclass, built from
:class:`ctfleet.settings.Settings` by its ``from_settings`` constructor, so the
names and attributes declared here are the ones the runtime reads:
``alerts``, ``fleet``, ``functions``, ``identity``, ``image``, ``monitoring``, ``network``, ``queues``, ``storage`` and ``tables``. Two helper modules hold
what more than one component declares the same way: ``keys`` (a rotated
customer KMS key and its alias) and ``policies`` (IAM policy documents).

Modules here import pulumi, pulumi_aws, ``ctfleet.settings`` and each other;
nothing else from ctfleet.
"""

from infra.components.alerts import Alerts, AlertsArgs
from infra.components.fleet import Fleet, FleetArgs
from infra.components.functions import Functions, FunctionsArgs
from infra.components.identity import Identity, IdentityArgs
from infra.components.image import Image, ImageArgs
from infra.components.monitoring import Monitoring, MonitoringArgs
from infra.components.network import Network, NetworkArgs
from infra.components.queues import Queues, QueuesArgs
from infra.components.storage import Storage, StorageArgs
from infra.components.tables import Tables, TablesArgs

__all__ = [
    "Alerts",
    "AlertsArgs",
    "Fleet",
    "FleetArgs",
    "Functions",
    "FunctionsArgs",
    "Identity",
    "IdentityArgs",
    "Image",
    "ImageArgs",
    "Monitoring",
    "MonitoringArgs",
    "Network",
    "NetworkArgs",
    "Queues",
    "QueuesArgs",
    "Storage",
    "StorageArgs",
    "Tables",
    "TablesArgs",
]
