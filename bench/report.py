"""The benchmark report: each benchmark owns one section of ``docs/benchmarks.md``.

A section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; a run
replaces its own section and leaves the others as they were.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

TITLE = [
    "# Benchmarks",
    "",
    "Numbers from one run of the commands below; absolute numbers depend on the machine,",
    "so compare the ratios, which are measured on the same machine in the same run.",
    "",
]


def write_section(path: Path, name: str, lines: list[str]) -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else "\n".join(TITLE)
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(lines: list[str], output: Path | None, name: str) -> None:
    """Print a benchmark's report and, with ``output``, write it as section ``name``."""
    print("\n".join(lines))
    if output:
        write_section(output, name, lines)
        print(f"wrote {output}")


def machine_description(directory: Path, packages: tuple[str, ...]) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    fs = "unknown"
    df = shutil.which("df")
    if df:
        out = subprocess.run(
            [df, "-T", str(directory)], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        if len(out) > 1:
            fs = out[1].split()[1]
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in packages)
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {mem_gib:.0f} GiB",
        f"- OS: {platform.system()} {platform.release()}; benchmark directory on {fs}",
        f"- Python {platform.python_version()}; {versions}",
    ]


def section_head(title: str, command: str, directory: Path, packages: tuple[str, ...]) -> list[str]:
    """The opening every section shares: its title, the command that wrote it, and the
    machine (with the versions of ``packages``) it ran on."""
    return [
        f"## {title}",
        "",
        f"Command: `{command}`",
        "",
        "Machine:",
        "",
        *machine_description(directory, packages),
        "",
    ]
