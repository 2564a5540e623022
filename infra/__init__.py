"""The ctfleet Pulumi program.

``infra/__main__.py`` is the program Pulumi runs (``main: infra/`` in
``Pulumi.yaml``); ``infra/components/`` holds one ``ComponentResource`` per
part of the system, each taking a frozen dataclass of arguments built from
:class:`ctfleet.settings.Settings`, the one source of names and attributes the
runtime also reads.
"""
