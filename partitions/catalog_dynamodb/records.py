"""Items to records, shared by the store's entity modules (the reverse of what they write).

Documents (quotas, plans, scopes, configs, metadata) are stored as JSON text with sorted
keys, as in the SQLite store, so that DynamoDB's number type never changes what a document
said (it has no floats, and its maps lose nothing but would need converting back).
"""

from __future__ import annotations

import json
from typing import Any

from partitions.catalog import (
    ApiKeyRecord,
    HashRange,
    PartitionRecord,
    PartitionState,
    TenantRecord,
    TopicRecord,
)


def json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def tenant_record(found: dict[str, Any]) -> TenantRecord:
    return TenantRecord(
        name=found["sk"],
        created_ms=found["created_ms"],
        quotas=json.loads(found["quotas"]),
        plan=json.loads(found["plan"]),
        version=found["version"],
    )


def api_key_record(found: dict[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        tenant=found["tenant"],
        key_id=found["key_id"],
        key_hash=found["key_hash"],
        scope=json.loads(found["scope"]),
        created_ms=found["created_ms"],
        last_used_ms=found.get("last_used_ms"),
    )


def topic_record(tenant: str, found: dict[str, Any]) -> TopicRecord:
    return TopicRecord(
        tenant=tenant,
        name=found["name"],
        incarnation=found["incarnation"],
        config=json.loads(found["config"]),
        created_ms=found["created_ms"],
        deleted=found.get("deleted_ms") is not None,
        deleted_ms=found.get("deleted_ms"),
        version=found["version"],
    )


def partition_record(
    tenant: str, topic: str, incarnation: str, found: dict[str, Any]
) -> PartitionRecord:
    return PartitionRecord(
        tenant=tenant,
        topic=topic,
        incarnation=incarnation,
        partition_id=found["pid"],
        hash_range=HashRange(found["hash_start"], found["hash_end"]),
        state=PartitionState(found["state"]),
        parents=tuple(found["parents"]),
        children=tuple(found["children"]),
        start_offset=found["start_offset"],
        end_offset=found.get("end_offset"),
        created_ms=found["created_ms"],
        sealed_ms=found.get("sealed_ms"),
        version=found["version"],
    )
