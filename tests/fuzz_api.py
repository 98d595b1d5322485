"""Fuzz the API from its own OpenAPI document: ``python -m tests.fuzz_api`` (``make fuzz``,
a part of ``make test``).

Three runs of schemathesis (``tests/schemathesis.toml``), each against a fresh
``eventbus serve`` on 127.0.0.1: the tenant routes with a tenant's key, the admin routes
with the admin key, and the public ones with none. Every check runs; each run is bounded in
time (about three minutes in all). Before a run, a few resources are made for the
fuzzer's path parameters to find: a topic ``fuzz`` with records, split once, a group ``g``,
and a tenant ``fuzz-tenant`` with a second key. ``tests/fuzz_hooks.py`` applies the rules
no schema can say to the fuzzer's valid cases.

A run fails on any finding, and also when its server logged a traceback or did not stop
cleanly. The exit status is 0 only when every run passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ROOT, ServerProcess

CONFIG = ROOT / "tests" / "schemathesis.toml"


@dataclass(frozen=True)
class Run:
    name: str
    operations: str  # a regular expression over paths
    key: str | None  # the credentials file's variable of the key to send
    seconds: int
    phases: str = "examples,coverage,fuzzing,stateful"


RUNS = (
    Run("tenant", r"^/v1/(topics|usage)", "EVENTBUS_API_KEY", 110),
    Run("admin", r"^/(v1/admin/|metrics$)", "EVENTBUS_ADMIN_KEY", 60),
    # No stateful phase: the public routes make nothing, so no link leads from them.
    Run(
        "public",
        r"^/(healthz|openapi\.json|console|console/\{asset\})$",
        None,
        15,
        "examples,coverage,fuzzing",
    ),
)


def _call(url: str, method: str, path: str, key: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback
        raw = answer.read()
    return json.loads(raw) if raw else None


def _seed(url: str, keys: dict[str, str]) -> dict[str, str]:
    """What the dictionaries of tests/schemathesis.toml name; answers the variables the
    settings read (the second key's id)."""
    tenant, admin = keys["EVENTBUS_API_KEY"], keys["EVENTBUS_ADMIN_KEY"]
    _call(url, "PUT", "/v1/topics/fuzz", tenant, {})
    records = [{"key": f"k{n}", "value": f"v{n}"} for n in range(20)]
    _call(url, "POST", "/v1/topics/fuzz/records", tenant, {"records": records})
    _call(url, "POST", "/v1/topics/fuzz/partitions/0/split", tenant, {})
    _call(url, "POST", "/v1/topics/fuzz/records", tenant, {"records": records})
    _call(url, "POST", "/v1/topics/fuzz/groups/g/fetch", tenant, {})
    _call(url, "POST", "/v1/admin/tenants", admin, {"name": "fuzz-tenant"})
    made = _call(url, "POST", "/v1/admin/tenants/fuzz-tenant/keys", admin, {"scope": "consume"})
    assert isinstance(made, dict)
    return {"FUZZ_KEY_ID": str(made["key_id"])}


def fuzz(run: Run, scratch: Path, extra: list[str]) -> bool:
    data_dir = scratch / run.name
    server = ServerProcess(
        data_dir,
        # Long polls and event streams end within the fuzzer's request timeout.
        args=[
            "--workers",
            "0",
            "--max-wait-ms",
            "1000",
            "--max-stream-ms",
            "2000",
            "--log-level",
            "WARNING",
        ],
        inherit_settings=False,
    ).start()
    try:
        keys = server.keys
        env = {
            **os.environ,
            **_seed(server.url, keys),
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
        }
        auth = [] if run.key is None else ["-H", f"Authorization: Bearer {keys[run.key]}"]
        command = [
            str(Path(sys.executable).parent / "st"),
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--include-path-regex",
            run.operations,
            *auth,
            "--max-examples",
            "1000",
            "--max-time",
            str(run.seconds),
            "--phases",
            run.phases,
            *extra,
        ]
        print(f"fuzz: {run.name} routes, {run.seconds} s", flush=True)
        started = time.monotonic()
        code = subprocess.call(command, cwd=ROOT, env=env)  # noqa: S603 - our own tool
        took = time.monotonic() - started
    finally:
        stopped = server.stop()
    log = server.stderr()
    clean = "Traceback" not in log and stopped == 0
    if not clean:
        print(f"fuzz: the {run.name} run's server stopped with {stopped}; its log:\n{log}")
    print(f"fuzz: {run.name} routes: exit {code} in {took:.0f} s", flush=True)
    return code == 0 and clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[run.name for run in RUNS], help="one run")
    parser.add_argument("extra", nargs="*", help="more arguments for `st run`")
    args = parser.parse_args(argv)
    runs = [run for run in RUNS if args.only in (None, run.name)]
    with tempfile.TemporaryDirectory(prefix="eventbus-fuzz-") as scratch:
        passed = [fuzz(run, Path(scratch), args.extra) for run in runs]
    print(f"fuzz: {sum(passed)} of {len(runs)} runs passed", flush=True)
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
