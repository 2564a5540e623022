"""Lambda handlers: api, ingest, triage, sweeper. Each is ``handle(event, deps)``.

Each handler is a thin sequence of pure steps and repository calls over
:class:`.deps.HandlerDeps`; its ``lambda_handler`` is ``handle(event, runtime.deps())``,
built once per cold start. Tests and the local stack call ``handle`` with
dependencies they built themselves.

May import: the kernel (``ctfleet.contracts``, ``ctfleet.intake``, ``ctfleet.aws``,
settings, errors, logs). No handler imports another handler, and none imports torch.
"""
