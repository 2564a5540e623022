"""Adapters over AWS: clients from settings, objects, records and the repositories that own
every state change, facility secrets, instance metadata, the model store.

Each adapter takes a boto3 client (or :class:`.clients.Clients`) in its
constructor; nothing builds a client at import time. Every ``ClientError`` is
sorted once here into the error tree (:func:`.failures.translate`).

May import: :mod:`ctfleet.contracts`, :mod:`ctfleet.errors`, :mod:`ctfleet.settings`,
boto3/botocore. Never the shells (``worker``, ``dispatcher``) or the outer ring.
"""
