"""The `sagews` command: one entry point whose subcommands live with the code they drive.

Each subcommand is registered in ``SUBCOMMANDS`` as ``name -> "module:function"``. The function
receives the remaining command-line arguments and returns an exit code. Modules are imported only
when their subcommand runs, so `sagews --help` stays fast and a worker without the backend's
dependencies can still run its own subcommands.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: ("module:function", one-line help)
    "version": ("sagews.cli:version", "print the sagews version"),
    "worker": ("sagews.worker.__main__:serve_main", "run the compute worker (TLS server, as root)"),
    "worker-call": ("sagews.worker.__main__:call_main", "send one request to a worker and print the replies"),
    "db": ("sagews.db.cli:main", "database schema migrations (upgrade, current, heads)"),
    "backup": ("sagews.backup.cli:main", "database backups: status (pgBackRest, WAL archive lag), report"),
    "logs": ("sagews.logserver.cli:main", "tail and filter stored log records"),
    "logserver": ("sagews.logserver.server:main", "run the log server (TLS, mutual auth)"),
    "backend": ("sagews.backend.cli:backend", "run the backend (HTTPS + SockJS)"),
    "admin": (
        "sagews.backend.cli:admin",
        "accounts, workspaces, workers (create-account, reset-password, ...)",
    ),
    "dev": ("sagews.backend.cli:dev", "backend + local worker, SQLite, HTTP on 127.0.0.1 (as root)"),
}


def version(argv: list[str]) -> int:
    from sagews import __version__

    print(__version__)
    return 0


def usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: sagews COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in sorted(SUBCOMMANDS.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"sagews: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
