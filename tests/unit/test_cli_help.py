"""Every flag of every ``flashsale`` subcommand (and ``python -m bench``) says what it means and its default
(issue 15): walks each ``--help`` as a user reads it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from flashsale.cli import COMMANDS

BOOLEAN = re.compile(r"^(--no-|--as-fast|--afap|--strict|--json|--quiet|-q|--dry-run|--loop$|--redis-cluster"
                     r"|--all-rooms|--no-simulate)")
REQUIRED = {"--room"}  # dashboard-link: --room or --all-rooms is required, no default to show


def options(text: str) -> dict[str, str]:
    """``--flag`` → its help text, from argparse's help output."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}(.*))?$", line)
        if m:
            flags = m.group(1)
            current = max(re.findall(r"--?[\w-]+", flags), key=len)
            out[current] = m.group(2) or ""
        elif current and line.startswith("    ") and line.strip():
            out[current] = (out[current] + " " + line.strip()).strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    out.pop("--help", None)
    return out


def help_of(argv: list[str]) -> str:
    proc = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "FLASHSALE_ENV_FILE": "/dev/null"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


CASES = [pytest.param(["-m", "flashsale", name], id=name) for name in COMMANDS]
CASES += [pytest.param(["-m", "bench"], id="bench")]


@pytest.mark.parametrize("argv", CASES)
def test_every_option_has_help_and_its_default(argv: list[str]) -> None:
    text = help_of(argv)
    assert "``" not in text, "reStructuredText shown literally"
    opts = options(text)
    assert opts, text
    for flag, help_text in opts.items():
        assert help_text, f"{flag} has no help text"
        if BOOLEAN.match(flag) or flag in REQUIRED:
            continue
        assert "default" in help_text.lower(), f"{flag}: no default in {help_text!r}"


def test_worker_help_names_only_real_agents() -> None:
    from streams.settings import WorkerSettings

    text = help_of(["-m", "flashsale", "worker"])
    agents = set(WorkerSettings.model_fields["agents"].default)
    assert "funnel agent" not in text and all(a in text for a in agents)


def test_a_bad_setting_is_one_line_and_exit_2() -> None:
    for cmd in ("audit", "topics", "simulate", "worker"):
        proc = subprocess.run([sys.executable, "-m", "flashsale", cmd], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "FLASHSALE_PARTITIONS": "x",
                                                             "FLASHSALE_ENV_FILE": "/dev/null"})
        assert proc.returncode == 2, (cmd, proc.stdout, proc.stderr)
        assert proc.stderr.strip().splitlines() == [f"flashsale {cmd}: FLASHSALE_PARTITIONS='x': expected an integer"]
