"""A real Redis Cluster on loopback for tests and benchmarks: 3 masters and 3 replicas started
from the ``redis-server`` binary in a temporary directory.

``LocalCluster.start()`` runs each node with ``--cluster-enabled yes`` (no persistence), joins
them with ``redis-cli --cluster create ... --cluster-replicas 1`` and waits until every node
reports ``cluster_state:ok`` and agrees on the slot map. The failure helpers (:meth:`kill`,
:meth:`restart`, :meth:`move_slot`) are what the failover and reshard tests drive.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


class ClusterError(RuntimeError):
    """The local cluster could not be started or changed."""


@dataclass
class LocalCluster:
    """``size`` redis-server processes on ``base_port``, ``base_port + 1``, ... (127.0.0.1).

    With ``replicas=1`` half of them are replicas. ``node_timeout`` (ms) is short so that a
    killed master is failed over within a few seconds.
    """

    base_port: int = 7101
    size: int = 6
    replicas: int = 1
    node_timeout: int = 1000
    folder: Path | None = None
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _own_folder: bool = False

    @property
    def ports(self) -> list[int]:
        return [self.base_port + n for n in range(self.size)]

    @property
    def url(self) -> str:
        """The application's ``REDIS_URL`` for this cluster."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, create the cluster and wait until it is healthy."""
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise ClusterError("redis-server and redis-cli must be on PATH")
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="arena-cluster-"))
            self._own_folder = True
        for port in self.ports:
            self._clear_leftover(port)
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_ping(port, timeout)
            create = [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ]
            result = subprocess.run(create, capture_output=True, timeout=timeout, check=False)
            if result.returncode != 0:
                raise ClusterError(
                    "redis-cli --cluster create failed: " + result.stdout.decode()[-2000:]
                )
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every node and delete the folder. Idempotent."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self.processes.clear()
        if self._own_folder and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _spawn(self, port: int) -> None:
        assert self.folder is not None
        node_dir = self.folder / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-node-timeout",
            str(self.node_timeout),
            # replicas sync at once (no persistence: the full sync streams the dataset)
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(node_dir),
            "--logfile",
            str(node_dir / "redis.log"),
        ]
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _clear_leftover(self, port: int) -> None:
        """A node left running by a crashed earlier run would break ``cluster create``."""
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2)
            try:
                client.shutdown(nosave=True)
            finally:
                client.close()

    # -- inspection ------------------------------------------------------------------------

    def client(self, port: int) -> redis.Redis:
        """A plain client to one node."""
        return redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=10)

    def _wait_ping(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self.processes[port]
            if process.poll() is not None:
                raise ClusterError(f"redis-server on port {port} exited ({process.returncode})")
            try:
                with self.client(port) as client:
                    client.ping()
                return
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline:
                    raise ClusterError(f"redis-server on port {port} did not answer") from None
                time.sleep(0.05)

    def alive(self) -> list[int]:
        """Ports of nodes whose process is running."""
        return [port for port, proc in self.processes.items() if proc.poll() is None]

    def slot_owners(self, port: int | None = None) -> dict[int, int]:
        """slot -> port of the master serving it, as node ``port`` (or any live one) sees it."""
        ask = port if port is not None else self.alive()[0]
        with self.client(ask) as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        owners: dict[int, int] = {}
        for start, end, master, *_ in ranges:
            for slot in range(int(start), int(end) + 1):
                owners[slot] = int(master[1])
        return owners

    def owner(self, slot: int) -> int:
        """Port of the master serving ``slot``."""
        return self.slot_owners()[slot]

    def masters(self) -> list[int]:
        """Ports of the live masters (by their own ``ROLE``)."""
        found = []
        for port in self.alive():
            with contextlib.suppress(redis.RedisError, OSError), self.client(port) as client:
                if client.execute_command("ROLE")[0] == b"master":
                    found.append(port)
        return sorted(found)

    def replica_of(self, master: int) -> int:
        """Port of a live replica of ``master``."""
        for port in self.alive():
            with contextlib.suppress(redis.RedisError, OSError), self.client(port) as client:
                role = client.execute_command("ROLE")
                if role[0] == b"slave" and int(role[2]) == master:
                    return port
        raise ClusterError(f"no live replica of {master}")

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok``, knows all 16384 slots, every live node
        agrees on the slot map and every replica is in sync with its master (a replica that
        never synced refuses to fail over)."""
        maps = []
        for port in self.alive():
            try:
                with self.client(port) as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    if isinstance(info, bytes):
                        info = info.decode()
                    if "cluster_state:ok" not in str(info):
                        return False
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
                maps.append(self.slot_owners(port))
            except (redis.RedisError, OSError):
                return False
        return bool(maps) and all(m == maps[0] and len(m) == 16384 for m in maps)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise ClusterError("the cluster did not become healthy in time")
            time.sleep(0.1)

    # -- faults and operations -------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no shutdown, no goodbye to the cluster)."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def restart(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again with its old node config (it rejoins, as a replica)."""
        self._spawn(port)
        self._wait_ping(port, timeout)

    def move_slot(self, slot: int, target: int, batch: int = 10, pause: float = 0.0) -> None:
        """Move ``slot`` with its keys from its master to master ``target``, the way
        ``redis-cli --cluster reshard`` does: SETSLOT IMPORTING/MIGRATING, MIGRATE keys in
        batches (``pause`` seconds apart, to stretch the migration), SETSLOT NODE on both and
        then on every other master."""
        source = self.owner(slot)
        if source == target:
            return
        with self.client(source) as src, self.client(target) as dst:
            src_id = src.execute_command("CLUSTER", "MYID").decode()
            dst_id = dst.execute_command("CLUSTER", "MYID").decode()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                time.sleep(pause)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for port in self.masters():
            if port not in (source, target):
                with contextlib.suppress(redis.RedisError), self.client(port) as other:
                    other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
