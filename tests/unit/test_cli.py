"""The `sagews` entry point."""

import subprocess
import sys

from sagews import __version__, cli


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    assert "version" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_every_registered_command_resolves():
    import importlib

    for name, (target, _help) in cli.SUBCOMMANDS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "sagews.cli", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == __version__
