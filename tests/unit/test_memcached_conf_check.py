"""The memcached role refuses to install a config memcached would choke on."""

import subprocess
import sys
from pathlib import Path

import pytest

CHECKER = Path(__file__).resolve().parents[2] / "roles/memcached/files/check-memcached-conf"


def check(tmp_path, text):
    conf = tmp_path / "memcached.conf"
    conf.write_text(text)
    return subprocess.run(
        [sys.executable, str(CHECKER), str(conf)], check=False, capture_output=True, text=True
    )


def test_config_the_role_writes_passes(tmp_path):
    text = "# managed\n-u root\n-l 127.0.0.1,10.0.0.5\n-p 11211\n-U 0\n-m 256\n-c 4096\n-t 4\n-I 1m\n"
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("-m lots", "-m"),
        ("-l 10.0.0.300", "-l"),
        ("-Z", "unknown option"),
        ("-u no-such-user-x", "-u"),
        ("-p 70000", "-p"),
    ],
)
def test_bad_lines_are_refused_with_the_reason(tmp_path, line, why):
    result = check(tmp_path, f"-p 11211\n{line}\n")
    assert result.returncode == 1
    assert why in result.stderr
