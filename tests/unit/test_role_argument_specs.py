"""Each role's meta/argument_specs.yml documents exactly its defaults/main.yml, with the same values.

Ansible validates a role's variables against argument_specs.yml when the role starts, but it takes the
defaults from defaults/main.yml only: the two files drift silently (a new variable left undocumented, a
changed default still documented with the old value, a type that no longer fits). These checks keep the
documentation an operator reads (argument_specs, the README's table) true to what the role does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALL_ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
# Roles not held to these checks yet, with the reason. A new role is checked unless it is listed here,
# and a listed role that passes fails test_exempt_roles_still_need_it: take it off the list then.
NOT_YET = {
    "etcd": "etcd_members is required in the specs yet defaulted to [] (so never missing)",
    "pgbackrest": "specs lack the defaults of computed variables",
    "postgresql": "specs lack the defaults of computed variables",
    "sagews_backend": "specs lack the defaults of empty or computed variables",
    "sagews_logserver": "specs lack the defaults of empty or computed variables",
    "sagews_runtime": "specs lack the defaults of empty or computed variables",
    "sagews_worker": "specs lack the defaults of empty or computed variables",
}
ROLES = [r for r in ALL_ROLES if r not in NOT_YET]
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "float": (float, int),
}


def load(role: str, rel: str) -> Any:
    path = ROOT / "roles" / role / rel
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def spec_options(role: str) -> dict[str, dict[str, Any]]:
    return load(role, "meta/argument_specs.yml")["argument_specs"]["main"].get("options", {})


def words(text: str) -> set[str]:
    """Lower-case words without a plural s: 'Timeouts.' and 'timeout' are the same word."""
    return {w.removesuffix("s") for w in re.findall(r"[a-z0-9]+", text.lower())}


def coverage_problems(role: str) -> list[str]:
    """Every default documented; every documented variable defaulted or required, not both."""
    defaults, options = load(role, "defaults/main.yml"), spec_options(role)
    problems = [
        f"{n}: in defaults/main.yml, missing from argument_specs" for n in defaults if n not in options
    ]
    for name, option in options.items():
        if name not in defaults and not option.get("required"):
            problems.append(f"{name}: documented but neither in defaults/main.yml nor required")
        if name in defaults and option.get("required"):
            problems.append(f"{name}: required yet defaulted in defaults/main.yml")
    return problems


def default_problems(role: str) -> list[str]:
    """The documented default is the one in defaults/main.yml, and of the documented type."""
    defaults, options = load(role, "defaults/main.yml"), spec_options(role)
    problems = []
    for name, value in defaults.items():
        option = options.get(name, {})
        if option.get("default", ...) != value:
            problems.append(f"{name}: documented default {option.get('default', 'none')!r}, is {value!r}")
        if isinstance(value, str) and "{{" in value:
            continue  # computed at run time; Ansible checks the type of the result
        kind = option.get("type", "str")
        if not isinstance(value, TYPES.get(kind, (object,))) or (kind == "int" and isinstance(value, bool)):
            problems.append(f"{name}: {value!r} is not of type {kind}")
        elif kind == "list" and option.get("elements") in TYPES:
            bad = [v for v in value if not isinstance(v, TYPES[option["elements"]])]
            if bad:
                problems.append(f"{name}: elements {bad!r} are not {option['elements']}")
    return problems


def description_problems(role: str) -> list[str]:
    """'Http port.' for haproxy_http_port tells an operator nothing the name did not."""
    problems = []
    for name, option in spec_options(role).items():
        description = option.get("description")
        text = " ".join(description) if isinstance(description, list) else str(description or "")
        if words(text) <= words(name.replace("_", " ")) | words(role):
            problems.append(f"{name}: the description restates the name: {text!r}")
    return problems


CHECKS = [coverage_problems, default_problems, description_problems]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("role", ROLES)
def test_role_argument_specs(role, check):
    problems = check(role)
    assert not problems, f"roles/{role}/meta/argument_specs.yml:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("role", sorted(NOT_YET))
def test_exempt_roles_still_need_it(role):
    assert role in ALL_ROLES, f"{role} is exempt but does not exist"
    assert any(check(role) for check in CHECKS), f"roles/{role} passes every check: remove it from NOT_YET"
