#!/usr/bin/python3
"""Ansible module: reconcile the local lab's namespace hosts with the wanted size.

A lab host is a network namespace (veth into one bridge, its own underlay address, no default
route) plus UTS, mount and PID namespaces (own hostname, own /opt, /etc/gossip-agent,
/var/lib/gossip-agent, /var/log, /root, /tmp and a tmpfs /run) whose PID 1 is the host's own sshd.
Killing that sshd ends every process of the host. Everything carries the lab prefix.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: lab_hosts
short_description: Create, repair, resize or remove the namespace hosts of the local lab
options:
  prefix: {description: Prefix of every namespace, link and directory, type: str, default: sgl}
  size: {description: Number of hosts wanted, type: int, default: 8}
  subnet: {description: Underlay subnet; the bridge holds its first address, type: str, default: 198.18.0.0/16}
  state_dir: {description: Where host directories, keys and configs live, type: path, required: true}
  state: {description: present or absent (removes every host and the bridge), type: str, default: present}
"""

PRIVATE_DIRS = {  # per-host directory -> mount point inside the host
    "opt": "/opt",
    "etc-gossip-agent": "/etc/gossip-agent",
    "var-lib-gossip-agent": "/var/lib/gossip-agent",
    "var-log": "/var/log",
    "root": "/root",
    "tmp": "/tmp",
}
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


def run(*args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, input=input_text)


class Lab:
    def __init__(self, prefix: str, subnet: str, state_dir: Path) -> None:
        self.prefix = prefix
        self.net = ipaddress.ip_network(subnet)
        self.state = state_dir
        self.bridge = f"{prefix}-br0"
        self.gateway = str(self.net.network_address + 1)
        self.changed = False

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

    # --- inventory of what exists ---------------------------------------------------------------

    def existing_namespaces(self) -> set[str]:
        out = run("ip", "netns", "list").stdout
        return {line.split()[0] for line in out.splitlines() if line.startswith(self.prefix + "-h")}

    def pid_alive(self, i: int) -> bool:
        pidfile = self.dir(i) / "host.pid"
        try:
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        # The host's unshare carries its own sshd config path: a reused PID cannot match.
        return b"unshare" in cmdline and str(self.dir(i) / "ssh" / "sshd_config").encode() in cmdline

    def mounts_ok(self, i: int) -> bool:
        """The host's private directories are still mounted (see remove_all for how they vanish)."""
        pid = int((self.dir(i) / "host.pid").read_text())
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            mountinfo = Path(f"/proc/{children[0]}/mountinfo").read_text()
        except (OSError, IndexError):
            return False
        targets = {line.split()[4] for line in mountinfo.splitlines()}
        return set(PRIVATE_DIRS.values()) <= targets

    def healthy(self, i: int) -> bool:
        if self.netns(i) not in self.existing_namespaces() or not self.pid_alive(i) or not self.mounts_ok(i):
            return False
        addrs = run("ip", "-n", self.netns(i), "-br", "addr", "show", "eth0", check=False).stdout
        return f"{self.ip(i)}/" in addrs and self.sshd_answers(i, 0.5)

    def sshd_answers(self, i: int, timeout: float) -> bool:
        try:
            with socket.create_connection((self.ip(i), 22), timeout=timeout) as sock:
                return sock.recv(4).startswith(b"SSH")
        except OSError:
            return False

    # --- building -------------------------------------------------------------------------------

    def ensure_base(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
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
        for mount_point in PRIVATE_DIRS.values():
            Path(mount_point).mkdir(parents=True, exist_ok=True)
        if run("ip", "link", "show", self.bridge, check=False).returncode != 0:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            self.changed = True
        cidr = f"{self.gateway}/{self.net.prefixlen}"
        if cidr not in run("ip", "-br", "addr", "show", self.bridge).stdout:
            run("ip", "addr", "replace", cidr, "dev", self.bridge)
            self.changed = True
        run("ip", "link", "set", self.bridge, "up")

    def remove_host(self, i: int) -> None:
        pidfile = self.dir(i) / "host.pid"
        if self.pid_alive(i):
            # --kill-child takes the host's PID 1 with it, and with PID 1 every process of the host.
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        if self.netns(i) in self.existing_namespaces():
            run("ip", "netns", "del", self.netns(i))
        run("ip", "link", "del", self.netns(i), check=False)
        shutil.rmtree(self.dir(i), ignore_errors=True)
        self.changed = True

    def create_host(self, i: int) -> None:
        ns, hostdir, name = self.netns(i), self.dir(i), self.name(i)
        for sub in PRIVATE_DIRS:
            (hostdir / sub).mkdir(parents=True, exist_ok=True)
        (hostdir / "ssh").mkdir(exist_ok=True)
        key = hostdir / "ssh" / "ssh_host_ed25519_key"
        if not key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        config = hostdir / "ssh" / "sshd_config"
        config.write_text(SSHD_CONFIG.format(ip=self.ip(i), dir=hostdir, state=self.state))
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", ns, "master", self.bridge, "up")
        run("ip", "-n", ns, "link", "set", "eth0", "address", self.mac(i))
        run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/{self.net.prefixlen}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        mounts = "\n".join(f"mount --bind {hostdir / sub} {point}" for sub, point in PRIVATE_DIRS.items())
        script = f"""set -e
hostname {name}
mount --make-rprivate /
{mounts}
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -f {config}
"""
        log = open(hostdir / "host.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--uts", "--mount", "--pid", "--fork", "--kill-child",
             "--mount-proc", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        (hostdir / "host.pid").write_text(str(process.pid))
        self.changed = True

    def wait_ssh(self, hosts: list[int], deadline: float = 30.0) -> list[int]:
        started = time.monotonic()
        waiting = list(hosts)
        while waiting and time.monotonic() - started < deadline:
            waiting = [i for i in waiting if not self.sshd_answers(i, 0.2)]
            if waiting:
                time.sleep(0.05)
        return waiting

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

    def remove_all(self) -> None:
        hosts_dir = self.state / "hosts"
        indexes = {int(ns.rsplit("-h", 1)[1]) for ns in self.existing_namespaces()}
        if hosts_dir.exists():
            indexes |= {int(p.name[1:]) for p in hosts_dir.iterdir() if p.name[1:].isdigit()}
        for i in sorted(indexes):
            self.remove_host(i)
        if run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            run("ip", "link", "del", self.bridge)
            self.changed = True
        if self.state.exists():
            shutil.rmtree(self.state)
            self.changed = True
        try:
            self.state.parent.rmdir()  # the labs' common parent, once no lab is left in it
        except OSError:
            return  # another lab is still up: its hosts' bind mounts sit on the mount points
        # Only now the empty mount points this module made may go: removing a directory that is
        # a mount point in another mount namespace silently unmounts it there (Linux >= 3.18),
        # which would make every host of another lab share the controller's directory.
        for point in ("/etc/gossip-agent", "/var/lib/gossip-agent"):
            try:
                Path(point).rmdir()
            except OSError:
                pass


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "prefix": {"type": "str", "default": "sgl"},
            "size": {"type": "int", "default": 8},
            "subnet": {"type": "str", "default": "198.18.0.0/16"},
            "state_dir": {"type": "path", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=False,
    )
    p = module.params
    if os.geteuid() != 0:
        module.fail_json(msg="the local lab needs root (network and mount namespaces)")
    for tool in ("ip", "unshare", "ssh-keygen", "/usr/sbin/sshd"):
        if shutil.which(tool) is None:
            module.fail_json(msg=f"{tool} not found; install iproute2, util-linux and openssh-server")
    try:
        net = ipaddress.ip_network(p["subnet"])
    except ValueError as exc:
        module.fail_json(msg=f"subnet {p['subnet']!r}: {exc}")
    if not 1 <= p["size"] <= min(1000, net.num_addresses - 12):
        module.fail_json(msg=f"size {p['size']}: must be 1..{min(1000, net.num_addresses - 12)} for {net}")
    lab = Lab(p["prefix"], p["subnet"], Path(p["state_dir"]))
    try:
        if p["state"] == "absent":
            lab.remove_all()
            module.exit_json(changed=lab.changed, hosts=[])
        lab.ensure_base()
        existing = {int(ns.rsplit("-h", 1)[1]) for ns in lab.existing_namespaces()}
        hosts_dir = lab.state / "hosts"
        existing |= {int(d.name[1:]) for d in hosts_dir.iterdir() if d.name[1:].isdigit()} if hosts_dir.exists() else set()
        removed = sorted(i for i in existing if i > p["size"])
        for i in removed:
            lab.remove_host(i)
        built = []
        for i in range(1, p["size"] + 1):
            if not lab.healthy(i):
                if i in existing:
                    lab.remove_host(i)  # half-built or dead: rebuild from scratch
                lab.create_host(i)
                built.append(i)
        failed = lab.wait_ssh(built)
        if failed:
            logs = {lab.name(i): (lab.dir(i) / "host.log").read_text()[-500:] for i in failed}
            module.fail_json(msg=f"sshd did not come up on {len(failed)} hosts", logs=logs)
        if built or removed:
            lab.write_neighbours(p["size"])
    except subprocess.CalledProcessError as exc:
        module.fail_json(msg=f"{' '.join(exc.cmd)} failed: {exc.stderr.strip()}")
    hosts = [{"name": lab.name(i), "ip": lab.ip(i), "netns": lab.netns(i)} for i in range(1, p["size"] + 1)]
    module.exit_json(changed=lab.changed, hosts=hosts, built=[lab.name(i) for i in built],
                     removed=[lab.name(i) for i in removed], key=str(lab.state / "id_ed25519"))  # fmt: skip


if __name__ == "__main__":
    main()
