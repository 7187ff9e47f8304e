"""The harness's model of what must hold (lab.history.Truth) against brute force: every table a
history of creates, updates, deletes and detaches with ok, fail and unknown (info) outcomes could leave
must pass the checker's judgement, and tables no such history can leave must fail it."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.history import History, Truth, Version

KEYS = ["k0", "k1", "k2"]
OWNERS = ["h1", "h2"]

op = st.tuples(
    st.sampled_from(["write", "write", "delete", "detach"]),
    st.sampled_from(KEYS),
    st.sampled_from(OWNERS),
    st.sampled_from(["v1", "v2", "v3"]),
    st.sampled_from(["ok", "ok", "fail", "info"]),
)
Op = tuple[str, str, str, str, str]


def apply(table: dict[str, Version | None], op: Op) -> None:
    kind, key, owner, value, _ = op
    if kind == "write":
        table[key] = Version(owner, value)
    elif kind == "delete":
        table[key] = None
    else:  # a detach deletes every entry of the leaver
        for k, v in table.items():
            if v is not None and v.owner == owner:
                table[k] = None


def possible_states(ops: list[Op]) -> dict[str, set[Version | None]]:
    """Per key, every state it may end in, by brute force. Ops that succeeded take effect in
    order; an op of unknown outcome takes effect never or at any moment after it began (it may
    still be running on its host), in any order with other such ops."""
    oks = [i for i, o in enumerate(ops) if o[4] == "ok"]
    unknown = [i for i, o in enumerate(ops) if o[4] == "info"]
    # Where each unknown op may land: never, or just before an ok op that began after it, or last.
    slots = [[None, *[j for j in oks if j > i], len(ops)] for i in unknown]
    result: dict[str, set[Version | None]] = {k: set() for k in KEYS}
    for choice in itertools.product(*slots):
        at: dict[int, list[int]] = {}
        for i, slot in zip(unknown, choice, strict=True):
            if slot is not None:
                at.setdefault(slot, []).append(i)
        groups = [list(itertools.permutations(at.get(j, []))) for j in [*oks, len(ops)]]
        for orders in itertools.product(*groups):
            table: dict[str, Version | None] = dict.fromkeys(KEYS)
            for j, order in zip([*oks, len(ops)], orders, strict=True):
                for i in order:
                    apply(table, ops[i])
                if j < len(ops):
                    apply(table, ops[j])
            for k, v in table.items():
                result[k].add(v)
    return result


def truth_of(ops: list[Op]) -> Truth:
    truth = Truth()
    for kind, key, owner, value, outcome in ops:
        if kind == "write":
            truth.wrote("net", {key: Version(owner, value)}, outcome)
        elif kind == "delete":
            truth.removed("net", {key}, outcome)
        else:
            truth.detached("net", owner, outcome)
    return truth


def clean(verdict: dict[str, list[str]]) -> bool:
    return not any(verdict.values())


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=9), st.data())
def test_every_table_the_history_allows_passes(ops, data):
    truth = truth_of(ops)
    states = possible_states(ops)
    table = {}
    for key in KEYS:
        state = data.draw(st.sampled_from(sorted(states[key], key=repr)))
        if state is not None:
            table[key] = state
    assert clean(truth.judge("net", table)), (ops, table)
    low, high = truth.count_range("net")
    assert low <= len(table) <= high


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=9), st.sampled_from(KEYS), st.sampled_from([*OWNERS, "h3"]), st.sampled_from(["v1", "v0"]))
def test_a_table_no_history_allows_fails(ops, key, owner, value):
    truth = truth_of(ops)
    states = possible_states(ops)
    base = {k: sorted(s, key=repr)[0] for k, s in states.items()}  # one allowed state per key
    table = {k: v for k, v in base.items() if v is not None}
    wrong = Version(owner, value)
    if wrong in states[key]:
        return  # that state is allowed
    table[key] = wrong
    verdict = truth.judge("net", table)
    assert not clean(verdict), (ops, table)
    if None not in states[key] and all(s is not None for s in states[key]):
        assert key in verdict["wrong"]
    # And a key that must be there, taken away, is missing.
    musts = [k for k, s in states.items() if None not in s and k != key]
    if musts:
        del table[musts[0]]
        assert musts[0] in truth.judge("net", table)["missing"]


def test_a_deleted_key_back_is_reported_as_resurrected():
    truth = Truth()
    truth.wrote("net", {"a": Version("h1", "x")}, "ok")
    truth.removed("net", {"a"}, "ok")
    verdict = truth.judge("net", {"a": Version("h1", "x")})
    assert verdict["resurrected"] == ["a"]
    assert verdict["unexpected"] == ["a"]


def test_excluding_an_owner_expects_none_of_its_entries():
    truth = Truth()
    truth.wrote("net", {"a": Version("h1", "x"), "b": Version("h2", "y")}, "ok")
    view = truth.excluding({"h1"})
    assert view.keys("net") == {"b"}
    assert clean(view.judge("net", {"b": Version("h2", "y")}))


def test_history_pairs_every_completion_with_its_invoke_and_lists_the_unfinished():
    history = History()
    first = history.invoke("create", "h1", network="net", count=10)
    second = history.invoke("delete", "h2", network="net", count=5)
    history.complete(first, "info", error="channel closed")
    assert [op["index"] for op in history.pending()] == [second]
    assert history.counts() == {"info": 1}
    assert history.ops[-1]["invoke"] == first
    assert history.ops[-1]["f"] == "create"
