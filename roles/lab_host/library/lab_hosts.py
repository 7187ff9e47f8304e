#!/usr/bin/python3
"""Ansible module: reconcile the local lab's hosts with the wanted size and kind.

Every lab host is a network namespace (veth into one bridge, its own underlay address, no default
route) with UTS, mount and PID namespaces. Two kinds (`init`):

- `sshd`: the machine's own filesystem with private bind mounts of what the role writes (/opt,
  /etc/gossip-agent, /var/lib/gossip-agent, /var/log, /root, /tmp, a tmpfs /run); the host's own
  sshd is PID 1 and root logs in with the lab key. Cheap (~2 MB, ~50 ms per host).
- `systemd`: a full Debian root (built once with debootstrap, kept read-only as the lower layer of
  an overlayfs per host) booted with systemd as PID 1 in a cgroup namespace of its own, so it has
  units, journald, dpkg and a non-root user `lab` with sudo, as a VM does.

Everything carries the lab prefix. A dead host is rebuilt and keeps its disk (the agent's journal,
as a VM's reboot would); a live host is never rebuilt, however slow its sshd: it is waited for.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_hosts
short_description: Create, repair, resize or remove the hosts of the local lab
description:
  - Reconciles; re-running with the same settings changes nothing. A bigger size adds hosts, a
    smaller one removes the extra ones; a dead or half-built host is rebuilt and keeps its disk; a
    live host whose sshd is slow is waited for, never rebuilt. Supports check mode.
options:
  prefix: {description: Prefix of every namespace, link, cgroup and directory, type: str, default: sgl}
  size: {description: Number of hosts wanted, type: int, default: 8}
  subnet: {description: Underlay subnet; the bridge holds its first address, type: str, default: 198.18.0.0/16}
  state_dir: {description: Where host directories, keys and configs live, type: path, required: true}
  state: {description: present or absent (removes every host and the bridge), type: str, default: present}
  init:
    description:
      - sshd (sshd as PID 1 on the machine's filesystem) or systemd (a Debian root booted with systemd).
      - Default the kind the lab was built with, else sshd; another kind than the lab's is refused.
    type: str
  rootfs_cache: {description: Where the systemd hosts' Debian root is built once and kept, type: path}
  release: {description: Debian release of the systemd hosts' root, type: str, default: bookworm}
  mirror: {description: Debian mirror for debootstrap; default the one this machine's apt uses, type: str}
  ssh_wait: {description: Seconds to wait for the hosts' sshd; a live host is never rebuilt, type: int, default: 120}
"""

RETURN = r"""
hosts: {description: Every host of the lab in order (name, ip, netns), type: list, elements: dict, returned: success}
built: {description: Hosts created or rebuilt (would be, in check mode), type: list, elements: str, returned: success}
removed: {description: Hosts removed as the size shrank (would be, in check mode), type: list, elements: str,
          returned: success}
key: {description: Private key that logs in to every host, type: str, returned: success}
user: {description: User to log in as (root on sshd hosts, lab with sudo on systemd ones), type: str, returned: success}
rootfs: {description: The systemd hosts' read-only Debian root, type: str, returned: init is systemd}
init: {description: The kind of the lab's hosts, type: str, returned: success}
"""

PRIVATE_DIRS = {  # sshd hosts: per-host directory -> mount point inside the host
    "opt": "/opt",
    "etc-gossip-agent": "/etc/gossip-agent",
    "var-lib-gossip-agent": "/var/lib/gossip-agent",
    "var-log": "/var/log",
    "root": "/root",
    "tmp": "/tmp",
}
# What survives a rebuild of a dead host: its disk (a systemd host's whole overlay upper layer).
DISK = {"sshd": {"init", "opt", "etc-gossip-agent", "var-lib-gossip-agent", "var-log", "root", "ssh", "host.log"},
        "systemd": {"init", "upper", "ssh", "machine-id", "lower", "host.log"}}  # fmt: skip
SSHD_CONFIG = """# written by the lab_hosts module
ListenAddress {ip}
Port 22
HostKey {dir}/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile {state}/authorized_keys
StrictModes no
MaxStartups 200:30:400
MaxSessions 64
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
"""

# --- systemd hosts: the Debian root they boot -------------------------------------------------
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "python3", "python3-venv",
                   "iproute2", "nftables", "iputils-ping", "procps", "kmod")  # fmt: skip
LAB_USER = "lab"
# Units that would reach outside the host (the machine's console, kernel-wide sysctls, binfmt,
# modules) or out of the lab (apt timers: there is no route out) are masked in the root.
MASKED_UNITS = ("getty.target", "getty@.service", "autovt@.service", "console-getty.service",
                "systemd-sysctl.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
                "proc-sys-fs-binfmt_misc.mount",
                "systemd-modules-load.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                "dpkg-db-backup.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer")  # fmt: skip
# No virtual terminals (logind would take the machine's), and the machine's kernel log stays out
# of every host's journal; the journal itself is persistent, like a VM's.
ROOTFS_CONFIG = {
    "etc/systemd/logind.conf.d/lab.conf": "[Login]\nNAutoVTs=0\nReserveVT=0\nRemoveIPC=no\n",
    "etc/systemd/journald.conf.d/lab.conf": "[Journal]\nReadKMsg=no\nStorage=persistent\nSystemMaxUse=64M\n",
}
ROOTFS_SSHD = """# written by the lab_hosts module
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxStartups 200:30:400
MaxSessions 64
UseDNS no
"""
BRIDGE_MAC = "02:5a:00:00:00:01"  # the controller's side of every lab (hosts have 02:5a:00:00:01:NN on)
HALT_TIMEOUT = 20.0  # seconds for systemd to halt on SIGRTMIN+3 before the host is killed


class LabError(Exception):
    """A reason the lab cannot be built, phrased for the user."""


def run(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, input=input_text)


def machine_mirror() -> str:
    """The Debian mirror this machine's apt already uses (deb822 .sources or one-line lists)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        uris = re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
        for uri in uris:
            if "security" not in uri:
                return uri
    raise LabError("no Debian mirror found in /etc/apt; set lab_host_mirror")


def rootfs_path(cache: Path, release: str) -> Path:
    """Where the root of this recipe lives: its name changes with the recipe, so a changed recipe
    never reuses a root built from another."""
    recipe = " ".join((release, *ROOTFS_PACKAGES, *MASKED_UNITS, ROOTFS_SSHD, *ROOTFS_CONFIG.values()))
    return cache / f"debian-{release}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def prune_roots(cache: Path, keep: Path) -> None:
    """Roots of older recipes (~330 MB each), once no lab is left that could boot from them."""
    if cache.is_dir():
        for old in cache.glob("debian-*"):
            if old != keep and old.is_dir():
                shutil.rmtree(old)


def ensure_rootfs(cache: Path, release: str, mirror: str) -> tuple[Path, bool]:
    """The systemd hosts' read-only root, built once (~1 min, ~330 MB) and kept. It is built in
    a temporary directory and renamed, so an interrupted build is never taken for a root."""
    root = rootfs_path(cache, release)
    if root.is_dir():
        return root, False
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap not found; systemd lab hosts need it: apt-get install debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # two lab-ups at once: one builds, the other waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir():
            return root, False
        _debootstrap(root, release, mirror)
    return root, True


def _debootstrap(root: Path, release: str, mirror: str) -> None:
    building = root.parent / f".building-{root.name}"
    shutil.rmtree(building, ignore_errors=True)
    packages = ",".join(ROOTFS_PACKAGES)
    result = run("debootstrap", "--variant=minbase", f"--include={packages}", release, str(building), mirror,
                 check=False)  # fmt: skip
    if result.returncode != 0:
        raise LabError(f"debootstrap {release} from {mirror} failed: {(result.stdout + result.stderr)[-600:]}")
    run("chroot", str(building), "useradd", "--create-home", "--shell", "/bin/bash", LAB_USER)
    sudoers = building / "etc/sudoers.d" / LAB_USER
    sudoers.write_text(f"{LAB_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    for unit in MASKED_UNITS:
        (building / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (building / "etc/systemd/system" / unit).symlink_to("/dev/null")
    for key in (building / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every host gets its own
    (building / "etc/ssh/sshd_config.d/lab.conf").write_text(ROOTFS_SSHD)
    for name, text in ROOTFS_CONFIG.items():
        (building / name).parent.mkdir(parents=True, exist_ok=True)
        (building / name).write_text(text)
    (building / "var/log/journal").mkdir(exist_ok=True)
    (building / "etc/machine-id").write_text("")
    (building / "etc/hostname").unlink(missing_ok=True)
    building.rename(root)


def cgroup_mounts() -> list[tuple[str, str, str]]:
    """(mount point relative to /sys/fs/cgroup, fs type, mount options) of each cgroup hierarchy:
    the v1 controllers, the named systemd one and cgroup2 of a hybrid machine, or one cgroup2."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _, options = tail.split(" ", 2)
        point = fields.split()[4]
        if fstype in ("cgroup", "cgroup2") and (point == "/sys/fs/cgroup" or point.startswith("/sys/fs/cgroup/")):
            opts = [o for o in options.split(",") if o not in ("rw", "ro")]
            if fstype == "cgroup" and all(o.startswith("name=") or o == "xattr" for o in opts):
                opts.insert(0, "none")  # a named hierarchy without controllers (name=systemd)
            found.append((point.removeprefix("/sys/fs/cgroup").lstrip("/"), fstype, ",".join(opts)))
    if not found:
        raise LabError("no cgroup hierarchy under /sys/fs/cgroup; systemd lab hosts need cgroups")
    return found


def recorded_kind(state: Path) -> str | None:
    """The kind of host the lab in `state` was built with, if one was (a lab built before kinds
    were recorded: systemd if any host has an overlay)."""
    try:
        return (state / "init").read_text().strip()
    except OSError:
        hosts = [d for d in (state / "hosts").iterdir() if d.is_dir()] if (state / "hosts").is_dir() else []
        if not hosts:
            return None
        return "systemd" if any((d / "upper").is_dir() for d in hosts) else "sshd"


class Lab:
    def __init__(
        self, prefix: str, subnet: str, state_dir: Path, init: str = "sshd", rootfs: Path | None = None
    ) -> None:
        self.prefix = prefix
        self.net = ipaddress.ip_network(subnet)
        self.state = state_dir
        self.init = init
        self.rootfs = rootfs
        self.bridge = f"{prefix}-br0"
        self.gateway = str(self.net.network_address + 1)
        self.changed = False
        self.started: dict[int, subprocess.Popen[bytes]] = {}  # hosts this run started
        self.bridge_moved = False  # the bridge's MAC changed: every host's gateway entry is stale

    def name(self, i: int) -> str:
        return f"h{i:02d}"

    def netns(self, i: int) -> str:
        return f"{self.prefix}-{self.name(i)}"

    def ip(self, i: int) -> str:
        return str(self.net.network_address + 10 + i)

    def mac(self, i: int) -> str:
        return "02:5a:{:02x}:{:02x}:{:02x}:{:02x}".format(*(i + 0x100).to_bytes(4, "big"))

    def dir(self, i: int) -> Path:
        return self.state / "hosts" / self.name(i)

    def kind(self, i: int) -> str:
        """The kind a host was built as: its `init` file, written before anything else of it; a
        host without one (built before kinds were recorded) is systemd if it has an overlay."""
        try:
            return (self.dir(i) / "init").read_text().strip()
        except OSError:
            return "systemd" if (self.dir(i) / "upper").is_dir() else "sshd"

    # --- what exists ----------------------------------------------------------------------------

    def existing_namespaces(self) -> set[str]:
        out = run("ip", "netns", "list").stdout
        return {line.split()[0] for line in out.splitlines() if line.startswith(self.prefix + "-h")}

    def existing(self) -> set[int]:
        indexes = {int(ns.rsplit("-h", 1)[1]) for ns in self.existing_namespaces()}
        hosts_dir = self.state / "hosts"
        if hosts_dir.exists():
            indexes |= {int(p.name[1:]) for p in hosts_dir.iterdir() if p.name[1:].isdigit()}
        return indexes

    def host_pid(self, i: int) -> int | None:
        """PID of the host's unshare, if it runs: its command line names this host's own files,
        so a reused PID cannot match."""
        try:
            pid = int((self.dir(i) / "host.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        marker = self.dir(i) / ("boot.sh" if self.kind(i) == "systemd" else "ssh/sshd_config")
        return pid if b"unshare" in cmdline and str(marker).encode() in cmdline else None

    def init_pid(self, i: int) -> int | None:
        """PID, on this machine, of the host's PID 1: the only child of its unshare."""
        pid = self.host_pid(i)
        try:
            return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]) if pid else None
        except (OSError, IndexError, ValueError):
            return None

    def intact(self, i: int) -> bool:
        """Alive and whole: its kind, namespace, address, PID 1 and (sshd hosts) private mounts.
        An intact host is never rebuilt, whether or not its sshd answers yet."""
        if self.kind(i) != self.init or self.netns(i) not in self.existing_namespaces():
            return False
        pid1 = self.init_pid(i)
        if pid1 is None:
            return False
        addrs = run("ip", "-n", self.netns(i), "-br", "addr", "show", "eth0", check=False).stdout
        if f"{self.ip(i)}/" not in addrs:
            return False
        try:
            if self.init == "systemd":
                return Path(f"/proc/{pid1}/comm").read_text().strip() == "systemd"
            # Removing a mount point in another mount namespace silently unmounts it here.
            mountinfo = Path(f"/proc/{pid1}/mountinfo").read_text()
        except OSError:
            return False
        return set(PRIVATE_DIRS.values()) <= {line.split()[4] for line in mountinfo.splitlines()}

    def sshd_answers(self, i: int, timeout: float) -> bool:
        try:
            with socket.create_connection((self.ip(i), 22), timeout=timeout) as sock:
                return sock.recv(4).startswith(b"SSH")
        except OSError:
            return False

    # --- building -------------------------------------------------------------------------------

    def ensure_base(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        if recorded_kind(self.state) != self.init:
            (self.state / "init").write_text(self.init)
        key = self.state / "id_ed25519"
        if not key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.prefix}-lab", "-f", str(key))
            self.changed = True
        authorized = self.state / "authorized_keys"
        public = (self.state / "id_ed25519.pub").read_text()
        if not authorized.exists() or authorized.read_text() != public:
            authorized.write_text(public)
            authorized.chmod(0o600)
            self.changed = True
        if self.init == "sshd":
            for mount_point in PRIVATE_DIRS.values():
                Path(mount_point).mkdir(parents=True, exist_ok=True)
        if run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            self.changed = True
        # A bridge without an address of its own takes its ports' lowest MAC, so a rebuilt host's
        # new veth could change it, and every host's permanent gateway entry would point nowhere.
        if Path(f"/sys/class/net/{self.bridge}/address").read_text().strip() != BRIDGE_MAC:
            run("ip", "link", "set", self.bridge, "address", BRIDGE_MAC)
            self.changed = self.bridge_moved = True
        cidr = f"{self.gateway}/{self.net.prefixlen}"
        if cidr not in run("ip", "-br", "addr", "show", self.bridge).stdout:
            run("ip", "addr", "replace", cidr, "dev", self.bridge)
            self.changed = True
        run("ip", "link", "set", self.bridge, "up")

    def unpin(self, i: int) -> None:
        """Give every process (every thread) of a host built before `use_every_cpu` the CPUs
        that this machine's init has, so an existing lab is mended by the next run."""
        cpus = os.sched_getaffinity(1)
        for pid in run("ip", "netns", "pids", self.netns(i), check=False).stdout.split():
            try:
                threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
            except (OSError, ValueError):  # gone meanwhile
                continue
            for tid in threads:
                try:
                    if os.sched_getaffinity(tid) != cpus:  # not a change of the lab's: its hosts are as they were
                        os.sched_setaffinity(tid, cpus)
                except OSError:  # gone meanwhile
                    continue

    def remove_host(self, i: int, keep_disk: bool) -> None:
        """Stop the host and remove its namespaces and cgroups; its disk stays when it is rebuilt."""
        kind = self.kind(i)  # once: the loop below must not see the host change kind midway
        if kind == "systemd":
            self._halt(i)
        elif pid := self.host_pid(i):
            os.kill(pid, signal.SIGKILL)  # --kill-child takes PID 1, and with it every process of the host
        if self.netns(i) in self.existing_namespaces():
            # Every process of the host lives in its netns: none survives a lost or stale host.pid.
            self._kill_all(lambda: run("ip", "netns", "pids", self.netns(i), check=False).stdout.split())
            run("ip", "netns", "del", self.netns(i))
        run("ip", "link", "del", self.netns(i), check=False)
        if kind == "systemd":
            self._remove_cgroups(i)
        if keep_disk and self.dir(i).exists():
            for path in self.dir(i).iterdir():
                if path.name not in DISK[kind]:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
        else:
            shutil.rmtree(self.dir(i), ignore_errors=True)
        self.changed = True

    def _halt(self, i: int) -> None:
        """systemd halts on SIGRTMIN+3 (on SIGTERM it would re-execute itself); a host that has
        not halted in time is killed with its PID namespace."""
        pid, pid1 = self.host_pid(i), self.init_pid(i)
        if pid is None:
            return
        if pid1 is not None:
            os.kill(pid1, signal.SIGRTMIN + 3)
            deadline = time.monotonic() + HALT_TIMEOUT
            while time.monotonic() < deadline and self.host_pid(i) == pid:
                time.sleep(0.1)
        if self.host_pid(i) == pid:
            os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _kill_all(pids: Callable[[], list[str]]) -> None:
        """SIGKILL every PID `pids()` names until it names none (each is a process of this lab's
        host, by its netns or cgroup); a process stuck in the kernel fails the run, never hangs it."""
        deadline = time.monotonic() + 10
        while left := pids():
            if time.monotonic() > deadline:
                raise LabError(f"processes {' '.join(left)} of a lab host do not die")
            for pid in left:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            time.sleep(0.05)

    def cgroup_dirs(self, i: int) -> list[Path]:
        return [Path("/sys/fs/cgroup") / rel / self.netns(i) for rel, _, _ in cgroup_mounts()]

    def _remove_cgroups(self, i: int) -> None:
        """Depth first (systemd made its slices inside); a cgroup whose last process has just died
        may stay busy for a moment."""
        for top in self.cgroup_dirs(i):
            if not top.exists():
                continue
            self._kill_all(lambda t=top: [pid for c in t.rglob("cgroup.procs") for pid in c.read_text().split()])
            deadline = time.monotonic() + 10
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                while directory.exists():
                    try:
                        directory.rmdir()
                    except OSError:
                        if time.monotonic() > deadline:
                            raise LabError(f"cgroup {directory} stays busy after its host stopped") from None
                        time.sleep(0.1)

    def _network(self, i: int) -> None:
        ns = self.netns(i)
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", ns, "master", self.bridge, "up")
        run("ip", "-n", ns, "link", "set", "eth0", "address", self.mac(i))
        run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/{self.net.prefixlen}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "set", "eth0", "up")

    def _host_key(self, i: int) -> Path:
        (self.dir(i) / "ssh").mkdir(parents=True, exist_ok=True)
        key = self.dir(i) / "ssh" / "ssh_host_ed25519_key"
        if not key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        return key

    def _start(self, i: int, argv: list[str]) -> None:
        log = open(self.dir(i) / "host.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        log.close()
        self.started[i] = process
        (self.dir(i) / "host.pid").write_text(str(process.pid))
        self.changed = True

    def create_host(self, i: int) -> None:
        self.dir(i).mkdir(parents=True, exist_ok=True)
        (self.dir(i) / "init").write_text(self.init)  # first: a run that dies midway knows the kind
        if self.init == "systemd":
            self._create_systemd_host(i)
        else:
            self._create_sshd_host(i)

    def _create_sshd_host(self, i: int) -> None:
        ns, hostdir, name = self.netns(i), self.dir(i), self.name(i)
        for sub in PRIVATE_DIRS:
            (hostdir / sub).mkdir(parents=True, exist_ok=True)
        self._host_key(i)
        config = hostdir / "ssh" / "sshd_config"
        config.write_text(SSHD_CONFIG.format(ip=self.ip(i), dir=hostdir, state=self.state))
        self._network(i)
        mounts = "\n".join(f"mount --bind {hostdir / sub} {point}" for sub, point in PRIVATE_DIRS.items())
        script = f"""set -e
hostname {name}
mount --make-rprivate /
{mounts}
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -f {config}
"""
        self._start(i, ["ip", "netns", "exec", ns, "unshare", "--uts", "--mount", "--pid", "--fork", "--kill-child",
                        "--mount-proc", "sh", "-c", script])  # fmt: skip

    def check_disk(self, i: int) -> None:
        """A systemd host's disk boots only on the root it was made on (another root's dpkg state
        and files would not match its upper layer)."""
        lower, upper = self.dir(i) / "lower", self.dir(i) / "upper"
        made_on = lower.read_text() if lower.exists() else ("an unknown root" if upper.is_dir() and any(upper.iterdir())
                                                            else str(self.rootfs))  # fmt: skip
        if made_on != str(self.rootfs):
            raise LabError(f"{self.name(i)}'s disk was made on {made_on}, not {self.rootfs}: remove the lab "
                           "with lab-down.yml to build it afresh")  # fmt: skip

    def _create_systemd_host(self, i: int) -> None:
        """The recipe of LAB-NOTES.md: the host's shell joins a cgroup of its own in every
        hierarchy, then unshares a cgroup namespace (its systemd takes that cgroup for the root,
        so two hosts' units never share one) with PID, mount and UTS namespaces inside the host's
        netns, mounts the overlay root and what systemd needs, and execs systemd in it. The
        overlay lives in the host's mount namespace: it goes away with the host."""
        assert self.rootfs is not None
        hostdir, name, root = self.dir(i), self.name(i), self.dir(i) / "root"
        for sub in ("upper", "work", "root"):
            (hostdir / sub).mkdir(exist_ok=True)
        key = self._host_key(i)
        machine_id = hostdir / "machine-id"
        if not machine_id.exists():
            machine_id.write_text(uuid.uuid4().hex + "\n")
        self.check_disk(i)
        (hostdir / "lower").write_text(str(self.rootfs))
        for directory in self.cgroup_dirs(i):
            directory.mkdir(exist_ok=True)
            if (directory.parent / "cpuset.cpus").exists():  # cgroup v1 cpuset is empty until copied down
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (directory / knob).write_text((directory.parent / knob).read_text())
        self._network(i)
        uid = run("chroot", str(self.rootfs), "id", "-u", LAB_USER).stdout.strip()
        mounts = cgroup_mounts()
        # A hybrid machine has a tmpfs at /sys/fs/cgroup with the hierarchies in it; a v2 one, cgroup2 there.
        tmpfs = [f"mount -t tmpfs -o mode=0755 tmpfs {root}/sys/fs/cgroup"]
        cgroups = [] if any(rel == "" for rel, _, _ in mounts) else tmpfs
        for rel, fstype, opts in mounts:
            target = f"{root}/sys/fs/cgroup/{rel}".rstrip("/")
            cgroups.append(f"mkdir -p {target}; mount -t {fstype} {'-o ' + opts if opts else ''} {fstype} {target}")
        cgroup_lines = "\n".join(cgroups)
        boot = hostdir / "boot.sh"
        boot.write_text(f"""set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir={self.rootfs},upperdir={hostdir}/upper,workdir={hostdir}/work {root}
echo {name} > {root}/etc/hostname
cp {machine_id} {root}/etc/machine-id
printf '127.0.0.1 localhost\\n127.0.1.1 {name}\\n' > {root}/etc/hosts
install -m 600 {key} {root}/etc/ssh/ssh_host_ed25519_key
install -m 644 {key}.pub {root}/etc/ssh/ssh_host_ed25519_key.pub
install -d -m 700 -o {uid} -g {uid} {root}/home/{LAB_USER}/.ssh
install -m 600 -o {uid} -g {uid} {self.state}/authorized_keys {root}/home/{LAB_USER}/.ssh/authorized_keys
mount -t proc proc {root}/proc
# Machine-wide knobs stay the machine's, as nspawn keeps them: /proc/sys is read-only but for the
# host's own network namespace, /sys and the sysrq trigger too; /dev holds only harmless nodes,
# a console that leads nowhere and a pty instance of the host's own.
mount --bind {root}/proc/sys {root}/proc/sys
mount --bind {root}/proc/sys/net {root}/proc/sys/net
mount -o remount,bind,ro {root}/proc/sys
if [ -e {root}/proc/sysrq-trigger ]; then
    mount --bind {root}/proc/sysrq-trigger {root}/proc/sysrq-trigger
    mount -o remount,bind,ro {root}/proc/sysrq-trigger
fi
mount -t sysfs -o ro sysfs {root}/sys
{cgroup_lines}
mount -t tmpfs -o mode=0755,nosuid tmpfs {root}/dev
for node in null zero full random urandom tty; do touch {root}/dev/$node; mount --bind /dev/$node {root}/dev/$node; done
touch {root}/dev/console
mount --bind /dev/null {root}/dev/console
mkdir {root}/dev/pts {root}/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts {root}/dev/pts
ln -s pts/ptmx {root}/dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs {root}/dev/shm
ln -s /proc/self/fd {root}/dev/fd
ln -s /proc/self/fd/0 {root}/dev/stdin
ln -s /proc/self/fd/1 {root}/dev/stdout
ln -s /proc/self/fd/2 {root}/dev/stderr
mount -t tmpfs -o mode=0755 tmpfs {root}/run
mount -t tmpfs -o mode=1777 tmpfs {root}/tmp
hostname {name}
exec setpriv --bounding-set -sys_module,-sys_time,-sys_rawio \\
    env -i container=lxc /usr/sbin/chroot {root} /lib/systemd/systemd
""")
        procs = " ".join(str(d / "cgroup.procs") for d in self.cgroup_dirs(i))
        join = f'for procs in {procs}; do echo $$ > "$procs"; done; exec "$@"'
        self._start(i, ["sh", "-c", join, "join", "ip", "netns", "exec", self.netns(i), "unshare", "--cgroup", "--ipc",
                        "--pid", "--fork", "--mount", "--uts", "--kill-child", "sh", str(boot)])  # fmt: skip

    def wait_ssh(self, hosts: list[int], deadline: float) -> tuple[list[int], list[int]]:
        """(silent, dead): hosts whose sshd has not answered by the deadline, and hosts that died
        meanwhile (their boot failed: waiting longer would not help)."""
        started = time.monotonic()
        waiting, dead = list(hosts), []
        while waiting and time.monotonic() - started < deadline:
            # A host started by this run is our child (its PID cannot be reused before we reap it);
            # its command line changes while it execs, so it is not asked.
            dead += [i for i in waiting if (self.started[i].poll() is not None if i in self.started
                                            else self.host_pid(i) is None)]  # fmt: skip
            waiting = [i for i in waiting if i not in dead and not self.sshd_answers(i, 2.0)]
            if waiting:
                time.sleep(0.1)
        return waiting, dead

    def write_neighbours(self, size: int) -> None:
        """Permanent neighbour entries: the kernel's dynamic table is shared by every namespace
        and holds 1,024 entries in all, too few for N^2 pairs beyond ~30 hosts."""
        entries = {self.ip(i): self.mac(i) for i in range(1, size + 1)}
        bridge_mac = Path(f"/sys/class/net/{self.bridge}/address").read_text().strip()
        for i in range(1, size + 1):
            lines = [f"neigh replace {self.gateway} lladdr {bridge_mac} dev eth0 nud permanent"]
            lines += [f"neigh replace {ip} lladdr {mac} dev eth0 nud permanent" for ip, mac in entries.items()
                      if ip != self.ip(i)]  # fmt: skip
            run("ip", "-n", self.netns(i), "neigh", "flush", "dev", "eth0", "nud", "permanent", check=False)
            run("ip", "-n", self.netns(i), "-batch", "-", input_text="\n".join(lines) + "\n")
        run("ip", "neigh", "flush", "dev", self.bridge, "nud", "permanent", check=False)
        lines = [f"neigh replace {ip} lladdr {mac} dev {self.bridge} nud permanent" for ip, mac in entries.items()]
        run("ip", "-batch", "-", input_text="\n".join(lines) + "\n")

    def remove_all(self) -> bool:
        """Everything, host by host: one host that fails to go does not keep the others (or their
        disks, which a later lab would otherwise boot from) alive."""
        failures = []
        for i in sorted(self.existing()):
            try:
                self.remove_host(i, keep_disk=False)
            except (LabError, OSError, subprocess.CalledProcessError) as exc:
                failures.append(f"{self.name(i)}: {exc}")
        if failures:
            raise LabError("could not remove " + "; ".join(failures))
        if run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            run("ip", "link", "del", self.bridge)
            self.changed = True
        if self.state.exists():
            shutil.rmtree(self.state)
            self.changed = True
        try:
            self.state.parent.rmdir()  # the labs' common parent, once no lab is left in it
        except OSError:
            return False  # another lab is still up: its hosts' bind mounts sit on the mount points
        # Only now the empty mount points this module made may go: removing a directory that is
        # a mount point in another mount namespace silently unmounts it there (Linux >= 3.18),
        # which would make every host of another lab share the controller's directory.
        for point in ("/etc/gossip-agent", "/var/lib/gossip-agent"):
            try:
                Path(point).rmdir()
            except OSError:
                pass
        return True


def reconcile(module: AnsibleModule, lab: Lab, size: int, ssh_wait: int) -> dict[str, object]:
    existing = lab.existing()
    removed = sorted(i for i in existing if i > size)
    rebuilt = [i for i in range(1, size + 1) if i in existing and not lab.intact(i)]
    built = sorted(rebuilt + [i for i in range(1, size + 1) if i not in existing])
    names = {"built": [lab.name(i) for i in built], "removed": [lab.name(i) for i in removed]}
    if module.check_mode:
        return {"changed": bool(built or removed), **names}
    if lab.init == "systemd":
        for i in rebuilt:  # before anything is removed: a refused disk must stay as it was
            lab.check_disk(i)
    lab.ensure_base()
    for i in removed:
        lab.remove_host(i, keep_disk=False)
    for i in rebuilt:  # from its own disk, as a VM reboots: the agent's journal survives
        lab.remove_host(i, keep_disk=lab.kind(i) == lab.init)
    for i in built:
        lab.create_host(i)
    for i in range(1, size + 1):
        if i not in built:
            lab.unpin(i)
    if built or removed or lab.bridge_moved:  # before waiting: sshd's answers need them
        lab.write_neighbours(size)
    # Every host is waited for, not only new ones: a live host whose sshd is slow (a loaded box)
    # is not rebuilt, and the run must not report the lab ready before it answers.
    silent, dead = lab.wait_ssh(list(range(1, size + 1)), ssh_wait)
    logs = {lab.name(i): (lab.dir(i) / "host.log").read_text()[-800:]
            for i in silent + dead if (lab.dir(i) / "host.log").exists()}  # fmt: skip
    if dead:
        hosts = ", ".join(lab.name(i) for i in dead)
        module.fail_json(msg=f"{hosts} died while starting (see logs: the end of each host's host.log)", logs=logs)
    if silent:
        hosts = ", ".join(lab.name(i) for i in silent)
        why = "a live host is not rebuilt, so its state is kept: re-run, or remove the lab with lab-down.yml"
        module.fail_json(msg=f"sshd did not answer within {ssh_wait} s on {hosts}; {why}", logs=logs)
    return {"changed": lab.changed, **names}


def use_every_cpu() -> None:
    """Run on the CPUs this machine's init has, which every process started from here inherits.
    Mitogen pins the processes it starts, and on a 2-core machine that left every lab host (its
    sshd, its agent) on one core while the other stood idle."""
    os.sched_setaffinity(0, os.sched_getaffinity(1))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "prefix": {"type": "str", "default": "sgl"},
            "size": {"type": "int", "default": 8},
            "subnet": {"type": "str", "default": "198.18.0.0/16"},
            "state_dir": {"type": "path", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "init": {"type": "str", "default": None, "choices": ["sshd", "systemd"]},
            "rootfs_cache": {"type": "path", "default": "/var/cache/scoped-gossip-lab/rootfs"},
            "release": {"type": "str", "default": "bookworm"},
            "mirror": {"type": "str", "default": None},
            "ssh_wait": {"type": "int", "default": 120},
        },
        supports_check_mode=True,
    )
    p = module.params
    if os.geteuid() != 0:
        module.fail_json(msg="the local lab needs root (network and mount namespaces)")
    try:
        use_every_cpu()
    except OSError as exc:  # a cpuset narrower than init's, say: the hosts keep this process's CPUs
        module.warn(f"lab hosts may not run on every CPU: {exc}")
    # A lab keeps its kind: a run that names none (a plain lab-up.yml) reuses it, one that names
    # another would replace every host and its disk, so it is refused while hosts exist.
    recorded = recorded_kind(Path(p["state_dir"]))
    init = p["init"] or recorded or "sshd"
    if p["state"] == "present" and recorded and init != recorded and (Path(p["state_dir"]) / "hosts").exists():
        module.fail_json(msg=f"lab {p['prefix']} has {recorded} hosts: pass lab_init={recorded}, or remove it "
                             f"first with lab-down.yml to build {init} hosts")  # fmt: skip
    tools = ["ip"] if p["state"] == "absent" else ["ip", "unshare", "ssh-keygen"]
    if p["state"] == "present":
        tools += ["/usr/sbin/sshd"] if init == "sshd" else ["chroot", "setpriv"]
    for tool in tools:
        if shutil.which(tool) is None:
            module.fail_json(msg=f"{tool} not found; install iproute2, util-linux, coreutils and openssh-server")
    try:
        net = ipaddress.ip_network(p["subnet"])
    except ValueError as exc:
        module.fail_json(msg=f"subnet {p['subnet']!r}: {exc}")
    if not 1 <= p["size"] <= min(1000, net.num_addresses - 12):
        module.fail_json(msg=f"size {p['size']}: must be 1..{min(1000, net.num_addresses - 12)} for {net}")
    result: dict[str, object] = {}
    try:
        if p["state"] == "absent":
            lab = Lab(p["prefix"], p["subnet"], Path(p["state_dir"]))
            if module.check_mode:
                module.exit_json(changed=bool(lab.existing()) or lab.state.exists(), hosts=[])
            if lab.remove_all():  # no lab left: no host can boot from an old root any more
                cache = Path(p["rootfs_cache"])
                prune_roots(cache, rootfs_path(cache, p["release"]))
            module.exit_json(changed=lab.changed, hosts=[])
        rootfs = None
        if init == "systemd" and not module.check_mode:
            rootfs, result["rootfs_built"] = ensure_rootfs(Path(p["rootfs_cache"]), p["release"],
                                                           p["mirror"] or machine_mirror())  # fmt: skip
            result["rootfs"] = str(rootfs)
        lab = Lab(p["prefix"], p["subnet"], Path(p["state_dir"]), init, rootfs)
        result.update(reconcile(module, lab, p["size"], p["ssh_wait"]))
    except subprocess.CalledProcessError as exc:
        command = " ".join(map(str, exc.cmd))[:300]
        module.fail_json(msg=f"{command} failed (exit {exc.returncode}): {(exc.stderr or '').strip()[-500:]}")
    except LabError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        module.fail_json(msg=f"lab {p['prefix']}: {exc.strerror or exc}{where}")
    except ValueError as exc:
        module.fail_json(msg=f"lab {p['prefix']}: {exc}")
    hosts = [{"name": lab.name(i), "ip": lab.ip(i), "netns": lab.netns(i)} for i in range(1, p["size"] + 1)]
    user = LAB_USER if init == "systemd" else "root"
    module.exit_json(hosts=hosts, key=str(lab.state / "id_ed25519"), user=user, init=init, **result)


if __name__ == "__main__":
    main()
