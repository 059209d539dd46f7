"""Hosts apart, on one machine: network namespaces joined by a bridge, each a "host" with its own address and name.

``with Hosts(["svc", "buf", "prod", "cons"]) as hosts:`` makes, for a random tag ``T``:

- a namespace ``bs-T-sw``, the switch, holding the bridge ``br0`` (the root namespace is left untouched);
- per host ``NAME``, a namespace ``bs-T-NAME`` whose ``eth0`` (one end of a veth pair; the other end is on
  the bridge) has the address ``10.231.0.(10+i)/24``, and whose ``lo`` is up;
- per host, ``/etc/netns/bs-T-NAME/hosts``, which ``ip netns exec`` mounts over ``/etc/hosts``: ``localhost``
  and every host as ``NAME.beamstream.test``, so that the hosts find each other by name.

Every namespace is its own network: ``10.231.0.0/24`` exists only inside them, and two harnesses at once do
not meet. On leaving (after a failure too, and when making them failed halfway) every process still in one
of its namespaces is killed, then the namespaces and their ``/etc/netns`` folders are removed.
:func:`cannot_make_hosts` says why namespaces cannot be made here (not root, no CAP_NET_ADMIN, no ``ip``),
for a test to skip with; :func:`hosts_apart` is the pytest fixture of four hosts (svc, buf, prod, cons).

As a script (what ``scripts/hosts.sh`` runs): ``python tests/hosts.py up NAME...`` makes hosts and leaves
them, printing their tag, namespaces, addresses and names; ``python tests/hosts.py down TAG`` removes them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
DOMAIN = "beamstream.test"
SUBNET = "10.231.0"  # /24, inside the harness's namespaces only
FIRST_ADDRESS = 10


@dataclass(frozen=True)
class Host:
    """One host: its short ``name`` (svc), ``fqdn`` (svc.beamstream.test), ``address`` and ``namespace``."""

    name: str
    address: str
    namespace: str

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{DOMAIN}"

    @property
    def launcher(self) -> list[str]:
        """The command that runs a command on this host (put before it)."""
        return ["ip", "netns", "exec", self.namespace]

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host."""
        return [*self.launcher, *argv]

    def run(self, argv: Sequence[str], **options) -> subprocess.CompletedProcess:
        """``subprocess.run(argv)`` on this host (``check`` unless told otherwise)."""
        options.setdefault("check", True)
        return subprocess.run(self.command(argv), **options)

    def commands(self) -> list[str]:
        """The command lines of the processes running on this host now (each joined by spaces)."""
        import psutil

        done = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, check=True)
        found = []
        for pid in done.stdout.split():
            try:
                found.append(" ".join(psutil.Process(int(pid)).cmdline()))
            except psutil.Error:  # it ended meanwhile
                continue
        return found

    def popen(self, argv: Sequence[str], **options) -> subprocess.Popen:
        """``subprocess.Popen(argv)`` on this host (stdin from /dev/null unless told otherwise)."""
        options.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.command(argv), **options)


def _ip(*args: str) -> None:
    """``ip ARGS``; RuntimeError with its words if it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit code {done.returncode}'}")


def cannot_make_hosts() -> str | None:
    """Why network namespaces cannot be made here (to skip a test with), or None if they can."""
    if shutil.which("ip") is None:
        return "hosts apart need iproute2's `ip` (apt-get install iproute2)"
    probe = f"bs-{secrets.token_hex(3)}-probe"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot make network namespaces ({exc}): hosts apart need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    try:
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
    except RuntimeError as exc:
        return f"cannot make a bridge in a network namespace ({exc})"
    finally:
        _ip("netns", "del", probe)
    return None


class Hosts:
    """Hosts named ``names`` (see the module's description); ``hosts[name]`` is a :class:`Host`, once entered."""

    def __init__(self, names: Sequence[str], tag: str | None = None) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be given, each once: {list(names)}")
        self.tag = tag or secrets.token_hex(3)
        self.switch = f"bs-{self.tag}-sw"
        self.hosts = {name: Host(name, f"{SUBNET}.{FIRST_ADDRESS + i}", f"bs-{self.tag}-{name}")
                      for i, name in enumerate(names)}

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def __enter__(self) -> Hosts:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def up(self) -> None:
        """Make the switch and the hosts; RuntimeError naming the ``ip`` command that failed (what it made stays:
        :meth:`down` removes it)."""
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "dev", "br0", "up")
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{host.address} {host.fqdn} {host.name}" for host in self]
        for i, host in enumerate(self):
            port = f"p{i}-{self.tag}"
            _ip("netns", "add", host.namespace)
            _ip("link", "add", "eth0", "netns", host.namespace, "type", "veth", "peer", "name", port,
                "netns", self.switch)
            _ip("-n", self.switch, "link", "set", "dev", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", "dev", port, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.namespace, "link", "set", "dev", "eth0", "up")
            _ip("-n", host.namespace, "link", "set", "dev", "lo", "up")
            folder = NETNS_ETC / host.namespace
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text("\n".join(lines) + "\n")

    def down(self) -> None:
        """Kill what still runs on the hosts, remove their namespaces, the switch and their /etc/netns folders
        (whatever of them exists)."""
        remove(self.tag)


def namespaces(tag: str) -> list[str]:
    """The namespaces of the hosts tagged ``tag`` (the switch last)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    found = [line.split()[0] for line in done.stdout.splitlines() if line.startswith(f"bs-{tag}-")]
    return sorted(found, key=lambda name: name == f"bs-{tag}-sw")


def remove(tag: str) -> None:
    """Remove the hosts tagged ``tag``: kill their processes, delete their namespaces and /etc/netns folders."""
    for namespace in namespaces(tag):
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    for folder in NETNS_ETC.glob(f"bs-{tag}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        NETNS_ETC.rmdir()  # once no one's hosts are left in it
    except OSError:
        pass


REQUIRED = "BEAMSTREAM_HOSTS_REQUIRED"  # set (CI): a test that cannot make hosts fails instead of being skipped


def hosts_apart_fixture() -> Iterator[Hosts]:
    """Four hosts (svc, buf, prod, cons), removed afterwards; the test is skipped, saying why, where they cannot be
    made (it fails instead with ``BEAMSTREAM_HOSTS_REQUIRED=1`` in the environment, as in CI)."""
    import pytest

    if (why := cannot_make_hosts()) is not None:
        if os.environ.get(REQUIRED):
            pytest.fail(f"{why} ({REQUIRED} is set)", pytrace=False)
        pytest.skip(why)
    with Hosts(["svc", "buf", "prod", "cons"]) as hosts:
        yield hosts


def _main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "up":
        if (why := cannot_make_hosts()) is not None:
            print(f"hosts.py: {why}", file=sys.stderr)
            return 1
        hosts = Hosts(argv[1:])
        try:
            hosts.up()
        except RuntimeError as exc:
            hosts.down()
            print(f"hosts.py: {exc}", file=sys.stderr)
            return 1
        print(f"tag {hosts.tag} (remove with: scripts/hosts.sh down {hosts.tag})")
        for host in hosts:
            print(f"{host.name:8} {host.address:15} {host.fqdn:28} ip netns exec {host.namespace} COMMAND")
        return 0
    if len(argv) == 2 and argv[0] == "down":
        if not namespaces(argv[1]):
            print(f"hosts.py: no hosts tagged {argv[1]!r} (ip netns list shows none named bs-{argv[1]}-*)",
                  file=sys.stderr)
            return 1
        remove(argv[1])
        return 0
    print("usage: hosts.py up NAME... | hosts.py down TAG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
