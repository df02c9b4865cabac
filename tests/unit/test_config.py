"""atoll/config.py: defaults < TOML file < ATOLL_* environment < command-line flags, and clear problems."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atoll.config import Config, ConfigError, load, setting_names

ATOLL = str(Path(sys.executable).parent / "atoll")


def write_toml(tmp_path, text: str) -> str:
    path = tmp_path / "atoll.toml"
    path.write_text(text)
    return str(path)


def problems_of(tmp_path, toml: str | None = None, env: dict | None = None, flags: dict | None = None) -> list[str]:
    path = write_toml(tmp_path, toml) if toml is not None else None
    with pytest.raises(ConfigError) as exc:
        load(path, flags or {}, env or {})
    assert str(exc.value) == "\n".join(exc.value.problems)
    return exc.value.problems


def test_defaults_without_anything():
    config = load(None, {}, {})
    assert config == Config()
    assert config.s3_host == "127.0.0.1" and config.s3_port == 9000
    assert config.metadata_path.endswith("meta.sqlite3")
    assert "min_part_size" in setting_names() and "extra" not in setting_names()


def test_precedence_file_then_env_then_flags(tmp_path):
    path = write_toml(tmp_path, """
        data_dir = "/from/file"
        s3_address = "127.0.0.1:1111"
        region = "eu-file-1"
        workers = 3
        s3_domains = ["file.example"]
        [timeouts]
        keep_alive = 11
        stall = 12.5
    """)
    env = {"ATOLL_S3_ADDRESS": "127.0.0.1:2222", "ATOLL_REGION": "eu-env-1", "ATOLL_KEEP_ALIVE_TIMEOUT": "21",
           "ATOLL_S3_DOMAINS": "a.example, b.example", "ATOLL_MIN_PART_SIZE": "1048576"}
    flags = {"region": "eu-flag-1", "workers": None, "data_dir": None}
    config = load(path, flags, env)
    assert config.data_dir == "/from/file"  # file only
    assert config.s3_address == "127.0.0.1:2222"  # env beats file
    assert config.region == "eu-flag-1"  # flag beats env and file
    assert config.workers == 3  # a flag left unset (None) does not override
    assert config.keep_alive_timeout == 21.0 and config.stall_timeout == 12.5
    assert config.s3_domains == ("a.example", "b.example")
    assert config.min_part_size == 1 << 20
    assert config.request_head_timeout == Config().request_head_timeout


def test_config_file_named_by_environment(tmp_path):
    path = write_toml(tmp_path, 'region = "ap-env-file-1"\n')
    assert load(None, {}, {"ATOLL_CONFIG": path}).region == "ap-env-file-1"
    assert load(None, {}, {"ATOLL_CONFIG": path, "ATOLL_REGION": ""}).region == "ap-env-file-1"  # empty = unset


@pytest.mark.parametrize("env_var, value, setting", [
    ("ATOLL_WORKERS", "many", "workers"),
    ("ATOLL_WORKERS", "2.5", "workers"),
    ("ATOLL_WORKERS", "0", "workers"),
    ("ATOLL_WORKERS", "1000", "workers"),
    ("ATOLL_S3_ADDRESS", "localhost", "s3_address"),
    ("ATOLL_S3_ADDRESS", "127.0.0.1:http", "s3_address"),
    ("ATOLL_S3_ADDRESS", "127.0.0.1:70000", "s3_address"),
    ("ATOLL_S3_ADDRESS", ":9000", "s3_address"),
    ("ATOLL_LOG_LEVEL", "loud", "log_level"),
    ("ATOLL_SHUTDOWN_GRACE", "-1", "shutdown_grace"),
    ("ATOLL_KEEP_ALIVE_TIMEOUT", "0", "keep_alive_timeout"),
    ("ATOLL_KEEP_ALIVE_TIMEOUT", "soon", "keep_alive_timeout"),
    ("ATOLL_KEEP_ALIVE_TIMEOUT", "nan", "keep_alive_timeout"),
    ("ATOLL_REQUEST_HEAD_TIMEOUT", "inf", "request_head_timeout"),
    ("ATOLL_STALL_TIMEOUT", "-5", "stall_timeout"),
    ("ATOLL_MAX_CLOCK_SKEW", "0", "max_clock_skew"),
    ("ATOLL_REGION", "us east", "region"),
    ("ATOLL_REGION", "", None),  # empty means unset: no problem
    ("ATOLL_METADATA", "mysql://db/atoll", "metadata"),  # postgresql:// and postgres:// are engines (#9)
    ("ATOLL_METADATA", "postgres://db/atoll", None),
    ("ATOLL_MIN_PART_SIZE", "0", "min_part_size"),
    ("ATOLL_MIN_PART_SIZE", str(6 << 30), "min_part_size"),
    ("ATOLL_MIN_PART_SIZE", "5MiB", "min_part_size"),
])
def test_every_invalid_environment_value_is_named(tmp_path, env_var, value, setting):
    if setting is None:
        load(None, {}, {env_var: value})
        return
    problems = problems_of(tmp_path, env={env_var: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(setting), problems
    assert "Traceback" not in problems[0] and ("expected" in problems[0]), problems


@pytest.mark.parametrize("toml, setting", [
    ("workers = 2.5", "workers"),
    ("workers = true", "workers"),
    ('workers = "2x"', "workers"),
    ("s3_address = 9000", "s3_address"),
    ('s3_domains = "one.example"', None),  # a single string is accepted as a one-item list
    ("s3_domains = [1, 2]", "s3_domains"),
    ("shutdown_grace = false", "shutdown_grace"),
    ("shutdown_grace = nan", "shutdown_grace"),
    ("[timeouts]\nkeep_alive = \"long\"", "keep_alive_timeout"),
    ("[timeouts]\nstall = -1", "stall_timeout"),
    ("min_part_size = 1.5e6", "min_part_size"),
])
def test_every_invalid_file_value_is_named(tmp_path, toml, setting):
    if setting is None:
        assert load(write_toml(tmp_path, toml), {}, {}).s3_domains == ("one.example",)
        return
    problems = problems_of(tmp_path, toml=toml)
    assert len(problems) == 1, problems
    assert problems[0].startswith(setting) and "expected" in problems[0], problems
    if "=" in toml and "\n" not in toml and setting not in ("shutdown_grace",):
        assert "config file" in problems[0], problems  # says where the bad value came from


def test_invalid_flag_says_command_line(tmp_path):
    problems = problems_of(tmp_path, flags={"workers": "lots"})
    assert problems == ["workers (command line): expected an integer, got 'lots'"]


def test_all_problems_are_reported_at_once(tmp_path):
    problems = problems_of(tmp_path, toml='workers = 0\nlog_level = "shout"\n',
                           env={"ATOLL_S3_ADDRESS": "nowhere", "ATOLL_STALL_TIMEOUT": "x"})
    assert sorted(p.split(":")[0].split(" ")[0] for p in problems) == ["log_level", "s3_address", "stall_timeout",
                                                                       "workers"]


def test_unknown_keys_in_toml_are_reported(tmp_path):
    problems = problems_of(tmp_path, toml='regoin = "x"\nworkers = 2\n[timeouts]\nkeep_alive = 5\nkeepalive = 6\n'
                                          '[tls]\ncert = "x"\n')
    joined = "\n".join(problems)
    assert "'regoin'" in joined
    assert "'timeouts.keepalive'" in joined or "'keepalive'" in joined
    assert "'tls'" in joined or "'tls.cert'" in joined
    assert len(problems) == 3, problems


def test_a_table_where_a_value_belongs_and_the_reverse(tmp_path):
    assert problems_of(tmp_path, toml="timeouts = 5\n")
    assert problems_of(tmp_path, toml="[workers]\nn = 2\n")


def test_unreadable_config_files(tmp_path):
    assert problems_of(tmp_path, flags={}, env={"ATOLL_CONFIG": str(tmp_path / "missing.toml")}) == [
        f"config file {tmp_path / 'missing.toml'}: not found"]
    problems = problems_of(tmp_path, toml="workers = = 2\n")
    assert len(problems) == 1 and "not valid TOML" in problems[0]
    assert problems_of(tmp_path, flags={}, env={"ATOLL_CONFIG": str(tmp_path)})[0].startswith(
        f"config file {tmp_path}: cannot be read")


def test_data_dir_that_is_a_file(tmp_path):
    afile = tmp_path / "plain-file"
    afile.write_text("x")
    problems = problems_of(tmp_path, flags={"data_dir": str(afile)})
    assert problems == [f"data_dir: {afile} exists and is not a directory"]


def test_serve_reports_problems_without_a_traceback(tmp_path):
    path = write_toml(tmp_path, 'workers = 0\nbogus = 1\n')
    result = subprocess.run([ATOLL, "serve", "--config", path, "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "invalid configuration" in result.stderr
    assert "workers: expected 1 to 256, got 0" in result.stderr and "'bogus'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
