"""The route judge (lab.routes) against the history model: the kernel state a correct agent
programs from any table the history allows passes; an entry taken away or one left behind fails."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.history import Version
from lab.routes import Endpoint, Kernel, endpoint_states, judge, parse_kernel

from .test_history import KEYS, Op, possible_states, truth_of

VTEP = {"h1": "198.18.0.1", "h2": "198.18.0.2"}
IP = {k: f"198.19.0.{i + 1}" for i, k in enumerate(KEYS)}


def endpoint_value(key: str, owner: str, value: str) -> str:
    """A container at IP[key] on `owner`; the value's variant picks its MAC (a re-created container)."""
    mac = f"02:42:00:00:0{KEYS.index(key)}:{value[-1]}0"
    return json.dumps({"container": f"gc-1-{key}", "mac": mac, "vtep": VTEP[owner]}, separators=(",", ":"))


op = st.tuples(
    st.sampled_from(["write", "write", "delete", "detach"]),
    st.sampled_from(KEYS),
    st.sampled_from(sorted(VTEP)),
    st.sampled_from(["v1", "v2"]),
    st.sampled_from(["ok", "ok", "fail", "info"]),
)


def as_endpoints(ops: list[Op]) -> list[Op]:
    return [(kind, key, owner, endpoint_value(key, owner, value), outcome) for kind, key, owner, value, outcome in ops]


def programmed(table: dict[str, Version | None], host: str) -> Kernel:
    """What a correct agent on `host` holds: every remote container's entries."""
    kernel = Kernel({}, {})
    for key, version in table.items():
        e = Endpoint.of(IP[key], version)
        if e is not None and e.vtep != VTEP[host]:
            kernel.fdb[e.mac], kernel.neigh[e.ip] = {e.vtep}, e.mac
    return kernel


def by_ip(truth_states: dict[str, set[Version | None]]) -> dict[str, set[Endpoint | None]]:
    return {IP[k]: {Endpoint.of(IP[k], v) for v in vs} for k, vs in truth_states.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=8), st.sampled_from(sorted(VTEP)), st.data())
def test_what_a_correct_agent_programs_passes_and_any_change_fails(ops, host, data):
    ops = as_endpoints(ops)
    truth = truth_of(ops)
    # The truth's keys are addresses in the lab; rename them here.
    for section in (truth.expected, truth.unsure):
        for net in section:
            section[net] = {IP[k]: v for k, v in section[net].items()}
    states = endpoint_states(truth, "net")
    table = {k: data.draw(st.sampled_from(sorted(s, key=repr))) for k, s in possible_states(ops).items()}
    kernel = programmed(table, host)
    assert judge(states, VTEP[host], kernel) == {"missing": [], "stale": []}, (ops, table)

    # Left behind: a route to a container no state of the network has.
    extra = Kernel({**kernel.fdb, "02:42:ff:ff:ff:ff": {"198.18.0.9"}}, dict(kernel.neigh))
    assert judge(states, VTEP[host], extra)["stale"] == ["fdb 02:42:ff:ff:ff:ff -> 198.18.0.9"]
    # A live container's MAC also sent to a second host: stale, and no longer right.
    if kernel.fdb:
        mac = sorted(kernel.fdb)[0]
        twice = Kernel({**kernel.fdb, mac: kernel.fdb[mac] | {"198.18.0.9"}}, dict(kernel.neigh))
        assert f"fdb {mac} -> 198.18.0.9" in judge(states, VTEP[host], twice)["stale"]
    # Taken away: a container surely on another host loses its neighbour entry.
    sure = [ip for ip, s in states.items() if len(s) == 1 and None not in s and next(iter(s)).vtep != VTEP[host]]
    if sure:
        gone = Kernel(dict(kernel.fdb), {ip: mac for ip, mac in kernel.neigh.items() if ip != sure[0]})
        assert judge(states, VTEP[host], gone)["missing"] == [sure[0]]


def test_own_containers_and_wrong_hosts_are_stale():
    ep = Endpoint("198.19.0.1", "02:42:c6:13:00:01", "198.18.0.1", "gc-1-1")
    states = {ep.ip: {ep}}
    # On its own host the bridge reaches it: an fdb entry there is stale.
    assert judge(states, "198.18.0.1", Kernel({ep.mac: {ep.vtep}}, {}))["stale"] == [f"fdb {ep.mac} -> {ep.vtep}"]
    # Elsewhere, pointing at the wrong host: missing and stale.
    verdict = judge(states, "198.18.0.2", Kernel({ep.mac: {"198.18.0.3"}}, {ep.ip: ep.mac}))
    assert verdict == {"missing": [ep.ip], "stale": [f"fdb {ep.mac} -> 198.18.0.3"]}


def test_kernel_dumps_keep_only_remote_and_permanent_entries():
    own = {"mac": "1e:9b:c4:15:30:3b", "master": "gbr-9", "state": "permanent"}  # the device's, the bridge's
    remote = {"mac": "02:42:c6:13:01:05", "dst": "198.18.251.2", "flags": ["self"], "state": "permanent"}
    fdb = json.dumps([own, remote])
    neigh = json.dumps([{"dst": "198.19.1.5", "lladdr": "02:42:c6:13:01:05", "state": ["PERMANENT"]},
                        {"dst": "198.19.1.6", "lladdr": "02:42:c6:13:01:06", "state": ["STALE"]}])  # fmt: skip
    kernel = parse_kernel(fdb, neigh)
    assert kernel.fdb == {"02:42:c6:13:01:05": {"198.18.251.2"}}
    assert kernel.neigh == {"198.19.1.5": "02:42:c6:13:01:05"}
