"""The settings table (fastserve/config/settings.py): every entry is complete, and the flags,
models.yaml's server section and --print_config are made from it."""
import subprocess
import sys
from pathlib import Path

import pytest

from fastserve import cli
from fastserve.config import ConfigError, ServerConfig, load_yaml, settings
from tests.conftest import REPO

ENTRIES = settings.entries()


def yaml_doc(key: str, value) -> dict:
    """{key: value} in models.yaml's server section, nested for "section.key"."""
    *outer, last = key.split(".")
    return {outer[0]: {last: value}} if outer else {last: value}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_entry_has_a_flag_or_key_help_and_a_default_that_validates(entry):
    assert entry.flag or entry.yaml
    assert entry.setting.help.strip()
    assert entry.problem(entry.default) is None
    assert getattr(ServerConfig(), entry.name) == entry.default
    if entry.yaml and entry.default is not None:  # written in models.yaml, the default reads back as itself
        plain = list(entry.default) if isinstance(entry.default, tuple) else entry.default
        assert settings.from_yaml(yaml_doc(entry.yaml, plain), Path("/")).get(entry.name, entry.default) == entry.default


def test_help_lists_every_flag():
    text = cli.build_parser().format_help()
    for entry in ENTRIES:
        if entry.flag:
            assert f"--{entry.flag}" in text


@pytest.mark.parametrize("flag, message", [
    ("--rest_max_header_bytes=0", "must be at least 1"),
    ("--port=70000", "70000 is not a port number"),
    ("--model_memory_budget_mb=-1", "must not be negative"),
    ("--tracing_sample_rate=2", "expected a fraction from 0 to 1"),
    ("--num_load_threads=x", "invalid int value: 'x'"),
])
def test_flags_are_checked_as_the_yaml_keys_are(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["--model_base_path=/m", flag])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_nested_and_unknown_keys(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("server: {tracing: {endpoint: 'h:1', sample_rate: 0.5}}\n")
    config = load_yaml(str(path))
    assert (config.tracing_endpoint, config.tracing_sample_rate) == ("h:1", 0.5)
    path.write_text("server: {tracing: {rate: 1}}\n")
    with pytest.raises(ConfigError, match=r"server.tracing.rate: unknown key \(expected one of: endpoint, sample_rate\)"):
        load_yaml(str(path))


def test_print_config_masks_secrets_and_imports_no_tensorflow(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "models.yaml").write_text("server: {auth_token_file: token, grpc_port: 9000}\nmodels: [{name: a, base_path: /m/a}]\n")
    script = ("import sys; from fastserve import cli; code = cli.main(sys.argv[1:]); "
              "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, f"--config={tmp_path / 'models.yaml'}", "--print_config", "--port=9100"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout and "auth_token: '***'" in result.stdout
    assert "grpc_port: 9100" in result.stdout and "- name: a" in result.stdout
