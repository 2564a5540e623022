"""The GPU worker: pulls jobs (urgent first), analyzes full CT volumes, writes results.

- :mod:`.main`: ``ctfleet worker``: wiring from settings, signals, the model loaded once;
- :mod:`.loop`: the receive loop and the one place that settles a message;
- :mod:`.job`: one job, claim to DONE, as short steps over the repositories;
- :mod:`.heartbeat`: visibility extension and hand-back; :mod:`.spot`: the spot-notice watcher;
- :mod:`.results`: the result writer.

May import: the kernel (:mod:`ctfleet.contracts`, :mod:`ctfleet.intake`,
:mod:`ctfleet.results`, :mod:`ctfleet.aws`, settings, errors, logs) and :mod:`model`.
Never :mod:`dispatcher` or the outer ring (``ctfleet.cli``, ``ctfleet.local``, ``ctfleet.dev``).
"""
