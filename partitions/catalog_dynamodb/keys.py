"""Where each thing lives in the tables: the keys of every item, in one place.

Names of tenants, topics and groups hold only characters above ``#`` (the gateway checks
them), so ``#`` separates the parts of a key and sorting keys sorts by their parts in order.
Numbers inside sort keys are zero-padded decimals (20 digits: ``2**64`` fits), so that they
sort as numbers.

``catalog`` table:

============================  ====================  =========================================
pk                            sk                    item
============================  ====================  =========================================
``SETTINGS``                  name                  an installation-wide setting (``value``)
``TENANTS``                   tenant                a tenant: quotas, plan, version, and the
                                                    live counters ``n_topics``, ``n_active``
``KEY#``\\ hash               ``KEY``               an API key by its hash (auth: one get)
``T#``\\ tenant               ``KEYID#``\\ key id   the tenant's side of a key (its hash)
``T#``\\ tenant               ``NAME#``\\ topic     the topic name's live incarnation
``T#``\\ tenant               ``INC#``\\ inc        an incarnation: name, config, version,
                                                    ``next_pid``, ``n_active``, deleted_ms
``P#``\\ tenant#inc           partition id          a partition (and its worker, if placed)
``G#``\\ tenant#inc           group#                a group: generation, metadata, version
``G#``\\ tenant#inc           group#``O``\\ pid     one committed offset of a group
``S#``\\ tenant#inc#pid       base offset           a remote segment
============================  ====================  =========================================

The sparse index ``gsi1`` holds deleted incarnations (``DELETED``, by deletion time) and
remote segments while they are ``copy-started`` or ``delete-started`` (``SEG#``\\ state, by
tenant, incarnation, partition and base offset): the lists that cleanup walks. It is
eventually consistent, so whoever acts on what it lists reads the item itself first.

``usage``: pk tenant, sk ``H#``\\ hour; the index ``by_day`` (``day``, ``hour_tenant``) lists
every tenant's hours of a day. Flush markers: pk ``FLUSH#``\\ id, sk ``FLUSH``.

``answers``: pk tenant#inc, sk the idempotency key.

``leases`` table (the rules are in :mod:`.nodes` and :mod:`.leases`):

==========================  ===============  =============================================
pk                          sk               item
==========================  ===============  =============================================
``NODES``                   node id          a node's session: ``session``, ``address``,
                                             ``state`` (alive, fenced, left), ``counter``
                                             (its heartbeats), ``load``
``COORDINATOR``             ``COORDINATOR``  the coordinator lease: ``node``, ``session``,
                                             ``counter``
``L#``\\ tenant#inc         partition id     a partition lease: ``owner``, ``session``,
                                             ``epoch``, ``state``, ``sources``
==========================  ===============  =============================================

The sparse index ``by_owner`` (``owner``, ``session``) holds the partition leases alone
(nothing else has an ``owner``): the leases of a node, or of one of its sessions, which the
coordinator looks for once a session is over. It is eventually consistent too.
"""

from __future__ import annotations

from typing import Any

SEP = "#"


def pad(number: int) -> str:
    return f"{number:020d}"


def key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


# --- catalog table -----------------------------------------------------------------------------

SETTINGS = "SETTINGS"
TENANTS = "TENANTS"


def setting(name: str) -> dict[str, Any]:
    return key(SETTINGS, name)


def tenant(name: str) -> dict[str, Any]:
    return key(TENANTS, name)


def tenant_pk(name: str) -> str:
    return f"T{SEP}{name}"


def api_key(key_hash: str) -> dict[str, Any]:
    return key(f"KEY{SEP}{key_hash}", "KEY")


def tenant_key(name: str, key_id: str) -> dict[str, Any]:
    return key(tenant_pk(name), f"KEYID{SEP}{key_id}")


def topic_name(name: str, topic: str) -> dict[str, Any]:
    return key(tenant_pk(name), f"NAME{SEP}{topic}")


def incarnation(name: str, inc: str) -> dict[str, Any]:
    return key(tenant_pk(name), f"INC{SEP}{inc}")


def partitions_pk(name: str, inc: str) -> str:
    return f"P{SEP}{name}{SEP}{inc}"


def partition(name: str, inc: str, pid: int) -> dict[str, Any]:
    return key(partitions_pk(name, inc), pad(pid))


def groups_pk(name: str, inc: str) -> str:
    return f"G{SEP}{name}{SEP}{inc}"


def group_prefix(group_name: str) -> str:
    """What the sort keys of a group's item and of its offsets begin with (and nothing
    else's: no group name holds ``#``)."""
    return f"{group_name}{SEP}"


def group(name: str, inc: str, group_name: str) -> dict[str, Any]:
    return key(groups_pk(name, inc), group_prefix(group_name))


OFFSET = "O"


def group_offset(name: str, inc: str, group_name: str, pid: int) -> dict[str, Any]:
    return key(groups_pk(name, inc), f"{group_prefix(group_name)}{OFFSET}{pad(pid)}")


def segments_pk(name: str, inc: str, pid: int) -> str:
    return f"S{SEP}{name}{SEP}{inc}{SEP}{pad(pid)}"


def segment(name: str, inc: str, pid: int, base_offset: int) -> dict[str, Any]:
    return key(segments_pk(name, inc, pid), pad(base_offset))


DELETED = "DELETED"


def segment_state_pk(state: str) -> str:
    return f"SEG{SEP}{state}"


def segment_order(name: str, inc: str, pid: int, base_offset: int) -> str:
    """The index's sort key of a segment: by tenant, incarnation, partition, base."""
    return f"{name}{SEP}{inc}{SEP}{pad(pid)}{SEP}{pad(base_offset)}"


def segment_order_after(name: str, inc: str, pid: int, base_offset: int) -> str:
    """A bound that the index sort keys of exactly the segments after (tenant, incarnation,
    partition, base) in that order are greater than. A negative partition or base stands
    for "before any": (t, i, -1, -1) is passed by every segment of t and i."""
    if pid < 0:
        return f"{name}{SEP}{inc}"
    if base_offset < 0:
        return f"{name}{SEP}{inc}{SEP}{pad(pid)}"
    return segment_order(name, inc, pid, base_offset)


# --- usage table -------------------------------------------------------------------------------

DAY_MS = 86_400_000


def usage(name: str, hour_ms: int) -> dict[str, Any]:
    return key(name, f"H{SEP}{pad(hour_ms)}")


def usage_day(hour_ms: int) -> str:
    return pad(hour_ms // DAY_MS)


def usage_hour_tenant(name: str, hour_ms: int) -> str:
    return f"{pad(hour_ms)}{SEP}{name}"


def flush_marker(flush_id: str) -> dict[str, Any]:
    return key(f"FLUSH{SEP}{flush_id}", "FLUSH")


# --- answers table -----------------------------------------------------------------------------


def answers_pk(name: str, inc: str) -> str:
    return f"{name}{SEP}{inc}"


def answer(name: str, inc: str, idempotency_key: str) -> dict[str, Any]:
    return key(answers_pk(name, inc), idempotency_key)


# --- leases table ------------------------------------------------------------------------------

NODES = "NODES"
COORDINATOR = "COORDINATOR"


def node(node_id: str) -> dict[str, Any]:
    return key(NODES, node_id)


def coordinator() -> dict[str, Any]:
    return key(COORDINATOR, COORDINATOR)


def leases_pk(name: str, inc: str) -> str:
    return f"L{SEP}{name}{SEP}{inc}"


def partition_lease(name: str, inc: str, pid: int) -> dict[str, Any]:
    return key(leases_pk(name, inc), pad(pid))
