"""The local stand-in for EC2: one ``ctfleet worker`` process per instance of the Auto Scaling group.

moto keeps the group (desired capacity, instances, scale-in protection) but runs
nothing; :class:`LocalFleet` follows it. An instance that appears is "booted"
after ``boot_s``: its worker starts with a local IMDS of its own that answers
with the instance's id and type. An instance the group removes (scale-in picks
only unprotected ones) goes through the termination lifecycle hook: its IMDS
says ``Terminated``, its worker finishes or hands back its job and exits (or is
stopped with SIGTERM when the hook times out), and its IMDS is closed. A worker that dies while its instance is still in
the group is an unhealthy instance: it is terminated in the group, which
launches a replacement, as an ASG health check would.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ctfleet.aws.fleet import FleetGroup
from ctfleet.errors import CtfleetError

from .imds_server import LocalImds

log = logging.getLogger(__name__)

POLL_S = 0.5


class LocalInstance:
    """One instance's worker process and its IMDS."""

    def __init__(self, instance_id: str, instance_type: str, env_for: Callable[[str], dict[str, str]],
                 log_path: Path | None) -> None:
        self.instance_id = instance_id
        self.imds = LocalImds(instance_id=instance_id, instance_type=instance_type).start()
        self._log: IO[bytes] | None = None
        out: Any = subprocess.DEVNULL
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "ctfleet", "worker"], env=env_for(self.imds.url),
                                     stdout=out, stderr=out, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """What EC2 does to a machine it stops: SIGTERM (the worker finishes its job, then exits)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for the worker to exit (kill it after ``timeout_s``), then close its IMDS and log."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.imds.stop()
        if self._log is not None:
            self._log.close()


class LocalFleet:
    """Follows the group in moto: starts, stops and replaces local instances.

    Parameters
    ----------
    group : FleetGroup
    env_for : callable
        IMDS URL -> the worker process's environment.
    boot_s : float
        Seconds between an instance appearing in the group and its worker starting.
    hook_s : float
        The termination lifecycle hook's timeout: a removed instance's worker has this long
        to finish (or hand back) its job and exit before it is stopped.
    log_dir : Path or None
        Each instance's stdout/stderr goes to ``log_dir/worker-<instance>.log``.
    shared_log : Path or None
        Or, if given, every instance appends to this one file.
    """

    def __init__(self, group: FleetGroup, env_for: Callable[[str], dict[str, str]], *, boot_s: float,
                 hook_s: float = 30.0, log_dir: Path | None = None, shared_log: Path | None = None) -> None:
        self.group = group
        self.hook_s = hook_s
        self.env_for = env_for
        self.boot_s = boot_s
        self.log_dir = log_dir
        self.shared_log = shared_log
        self.instances: dict[str, LocalInstance] = {}
        self.history: list[tuple[float, int]] = []  # (time, running instances) at every change
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="local-fleet", daemon=True)

    @property
    def size(self) -> int:
        with self._lock:
            return len(self.instances)

    def start(self) -> "LocalFleet":
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        with self._lock:
            instances = list(self.instances.values())
            self.instances.clear()
        for instance in instances:
            instance.terminate()
        for instance in instances:
            instance.close(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.follow(time.monotonic())
            except CtfleetError:
                log.warning("local fleet could not read the group; retrying", exc_info=True)

    def follow(self, now: float) -> None:
        """One step: boot new instances, stop removed ones, replace dead ones."""
        view = self.group.view()
        in_group = {i.instance_id: i for i in view.instances}
        for instance_id in in_group:
            self._seen.setdefault(instance_id, now)
        changed = False
        for instance_id, instance in in_group.items():
            booted = now - self._seen[instance_id] >= self.boot_s
            if booted and instance_id not in self.instances:
                self._launch(instance_id, instance.instance_type)
                changed = True
        for instance_id in [i for i in self.instances if i not in in_group]:
            self._retire(instance_id)
            changed = True
        for instance_id, local in list(self.instances.items()):
            if not local.alive():
                self._replace(instance_id)
                changed = True
        if changed:
            self.history.append((time.time(), self.size))
            log.info("local fleet", extra={"instances": self.size, "desired": view.desired})

    def _launch(self, instance_id: str, instance_type: str) -> None:
        path = self.shared_log or (self.log_dir / f"worker-{instance_id}.log" if self.log_dir else None)
        with self._lock:
            self.instances[instance_id] = LocalInstance(instance_id, instance_type, self.env_for, path)

    def _retire(self, instance_id: str) -> None:
        """The group removed the instance: play its termination lifecycle hook, then stop it.

        moto terminates at once and keeps no Terminating:Wait state, so the hook is
        played here: IMDS says ``Terminated``, the worker finishes or hands back its
        job and exits; after the hook's timeout it gets SIGTERM like any stopping machine.
        """
        with self._lock:
            local = self.instances.pop(instance_id)
        local.imds.terminate()

        def wait_then_stop() -> None:
            try:
                local.proc.wait(timeout=self.hook_s)
            except subprocess.TimeoutExpired:
                local.terminate()
            local.close()

        threading.Thread(target=wait_then_stop, name=f"retire-{instance_id}", daemon=True).start()

    def _replace(self, instance_id: str) -> None:
        """The worker died with its instance in the group: an unhealthy instance, replaced by the group."""
        with self._lock:
            local = self.instances.pop(instance_id)
        local.close(timeout_s=1.0)
        log.warning("instance's worker died; replacing the instance", extra={"instance": instance_id})
        self.group.replace_instance(instance_id)
