"""Lambda handlers: ingest, api, triage. Each is a function of (event, deps).

The ``lambda_handler`` entry points build their dependencies once per cold
start from the environment; tests and the local stack call ``handle`` directly
with dependencies they built themselves.
"""
