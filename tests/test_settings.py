"""Server settings are declared once: ``eventbus serve --help`` says what a running server
runs with, each flag has its environment variable, and a flag given wins over both."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cli.main import build_parser
from gateway.cli.serve import build_config
from gateway.config import ServerConfig
from gateway.settings import describe, flags, say
from gateway.tenancy.billing import PricePlan
from gateway.tenancy.quotas import Quotas
from tests.servers import ROOT, ServerProcess

# The flags the test itself gives the server it starts.
GIVEN = {"data-dir", "port", "workers"}
_OPTION = re.compile(
    r"(--[a-z0-9-]+)(?: [A-Z_]+)? +(.*?)\[default: (.*?); env (EVENTBUS_[A-Z0-9_]+)\]"
)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    # One line per option, however long: the defaults are read off the text.
    return {**env, "COLUMNS": "100000", "PYTHONPATH": str(ROOT)}


def _help_defaults() -> dict[str, tuple[str, str]]:
    """flag -> (default, environment variable), as ``eventbus serve --help`` says them."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--help"],
        capture_output=True,
        cwd=ROOT,
        env=_clean_env(),
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.decode().split())
    found = {m[1].removeprefix("--"): (m[3], m[4]) for m in _OPTION.finditer(text)}
    assert found, text
    return found


def test_serve_help_says_the_defaults_a_running_server_runs_with(tmp_path: Path) -> None:
    said = _help_defaults()
    server = ServerProcess(tmp_path / "data", args=["--workers", "0"], inherit_settings=False)
    server.start()
    try:
        running = _logged_settings(server)
    finally:
        assert server.stop() == 0
    # Every flag the help names is one the server reports, and the other way round (the
    # price plan's file is the one flag with no value of its own to report).
    assert set(said) - {"price-plan"} == set(running)
    for name, (default, env_name) in said.items():
        assert env_name == "EVENTBUS_" + name.upper().replace("-", "_")
        if name in GIVEN or name == "price-plan":
            continue
        assert running[name] == default, (name, running[name], default)


def _logged_settings(server: ServerProcess) -> dict[str, str]:
    for line in server.stderr().splitlines():
        entry = json.loads(line)
        if entry.get("msg") == "settings":
            settings: dict[str, str] = entry["settings"]
            return settings
    raise AssertionError(f"no settings line in the server's log: {server.stderr()[-2000:]}")


def _config(*args: str) -> ServerConfig:
    parser = build_parser()
    return build_config(parser.parse_args(["serve", *args]))


def test_no_flag_and_no_environment_give_the_declared_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("EVENTBUS_"):
            monkeypatch.delenv(name)
    assert _config() == ServerConfig()
    assert describe(_config()) == describe(ServerConfig())


def test_the_environment_sets_a_default_and_a_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_MAX_WAIT_MS", "1234")
    monkeypatch.setenv("EVENTBUS_DEFAULT_REQUESTS_PER_S", "50")
    monkeypatch.setenv("EVENTBUS_METRICS_PUBLIC", "true")
    monkeypatch.setenv("EVENTBUS_ADMIN_KEY", "ebk_from-the-environment")
    config = _config()
    assert config.max_wait_ms == 1234
    assert config.default_quotas == Quotas(requests_per_s=50)
    assert config.metrics_public is True
    assert config.admin_key == "ebk_from-the-environment"
    assert "ebk_from" not in repr(config)  # a secret never reaches a log line
    flagged = _config("--max-wait-ms", "99", "--default-requests-per-s", "unlimited")
    assert flagged.max_wait_ms == 99
    assert flagged.default_quotas == Quotas()


def test_price_flags_win_over_the_plan_file(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"usd_per_gb_in": "1.5", "usd_per_gb_out": "2"}))
    config = _config("--price-plan", str(plan), "--default-usd-per-gb-out", "3")
    assert config.default_plan == PricePlan(
        usd_per_gb_in=Decimal("1.5"), usd_per_gb_out=Decimal("3")
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--port", "70000"], "a port is 0 to 65535"),
        (["--workers", "300"], "must be from 0 to 256"),
        (["--default-requests-per-s", "0"], "must be at least 1"),
        (["--default-usd-per-gb-in", "-1"], "usd_per_gb_in is a price"),
        (["--log-level", "LOUD"], "DEBUG, INFO, WARNING or ERROR"),
    ],
)
def test_a_bad_value_is_refused_with_what_is_allowed(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _config(*args)
    assert complaint in capsys.readouterr().err


def test_every_setting_but_the_secret_has_a_flag() -> None:
    reached = {flag.path[0] for flag in flags(ServerConfig)}
    # The admin key is a secret: only its environment variable sets it.
    assert reached == set(ServerConfig.__dataclass_fields__) - {"admin_key"}


def _flags_table() -> str:
    """The table of ``eventbus serve``'s flags that docs/api.md holds."""
    rows = [
        "| flag | environment | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for flag in flags(ServerConfig):
        shown = flag.setting.none_means if flag.setting.prefix else say(flag.default, flag.setting)
        text = flag.setting.help.replace("|", "\\|")
        rows.append(f"| `{flag.option}` | `{flag.env}` | {shown} | {text} |")
    rows.append(
        "| | `EVENTBUS_ADMIN_KEY` | made at first start | the admin key (a secret: no flag) |"
    )
    return "\n".join(rows)


def test_the_api_docs_list_every_flag_as_the_help_does() -> None:
    """docs/api.md's table of flags is the settings' own: a change to a setting shows here
    until the table is written again (the message holds the table to paste)."""
    text = (ROOT / "docs" / "api.md").read_text()
    start, end = "<!-- serve-flags -->\n", "\n<!-- /serve-flags -->"
    documented = text[text.index(start) + len(start) : text.index(end)]
    expected = _flags_table()
    assert documented == expected, "docs/api.md's table of flags should read:\n" + expected
