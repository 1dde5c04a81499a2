"""The sidecar config contract: defaults, file loading, overrides, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from openai_runtime_sidecar.config import (
    ModelSettings,
    SidecarConfig,
    load_sidecar_config,
    parse_listen,
)
from openai_runtime_sidecar.configfile import ConfigError
from openai_runtime_sidecar.runner.modeling import ValidationError


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_only_the_variant_is_required() -> None:
    config = SidecarConfig.model_validate({"variant": {"direct": {}}})
    assert config.api_key.file == "/var/run/secrets/openai-runtime/api-key"
    assert config.listen.api == "127.0.0.1:8787" and config.listen.admin == "0.0.0.0:9464"
    assert config.models.allow == [] and config.models.default is None
    assert config.watch.interval == 0.5 and config.watch.shutdown_grace == 30
    assert config.limits.max_request_bytes == 8 * 1024 * 1024
    assert config.retry.max_attempts == 3 and config.rate_limits.max_queue_wait == 2


def test_yaml_and_json_load_the_same(tmp_path: Path) -> None:
    yaml_path = write(
        tmp_path,
        "variant: {azure: {resource: r, deployment: d, apiVersion: 2024-10-21}}\n"
        "models: {allow: [gpt-4o], default: gpt-4o}\n"
        "watch: {interval: 250ms}\n",
    )
    json_path = write(
        tmp_path,
        '{"variant": {"azure": {"resource": "r", "deployment": "d", "apiVersion": "2024-10-21"}},'
        ' "models": {"allow": ["gpt-4o"], "default": "gpt-4o"}, "watch": {"interval": 0.25}}',
        "config.json",
    )
    environ: dict[str, str] = {}
    assert load_sidecar_config(yaml_path, environ) == load_sidecar_config(json_path, environ)


def test_environment_overrides_the_key_reference(tmp_path: Path) -> None:
    path = write(tmp_path, "variant: {direct: {}}\napiKey: {file: /a}\n")
    by_file = load_sidecar_config(path, {"OPENAI_RUNTIME_API_KEY_FILE": "/b"})
    assert by_file.api_key.file == "/b"
    by_env = load_sidecar_config(path, {"OPENAI_RUNTIME_API_KEY_ENV": "MY_KEY"})
    assert by_env.api_key.env == "MY_KEY" and by_env.api_key.file is None
    with pytest.raises(ConfigError, match="only one"):
        load_sidecar_config(
            path, {"OPENAI_RUNTIME_API_KEY_FILE": "/b", "OPENAI_RUNTIME_API_KEY_ENV": "K"}
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("variant: {direct: {}}\nretry: {maxAttempts: 0}\n", "retry.maxAttempts"),
        ("variant: {direct: {}}\nlisten: {api: 'nowhere'}\n", "listen.api"),
        ("variant: {direct: {}, azure: {resource: r, deployment: d}}\n", "variant"),
        ("variant: {direct: {}}\nmodels: {allow: [a], default: b}\n", "models"),
        ("variant: {direct: {}}\nbogus: 1\n", "bogus"),
        ("variant: [\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_configs_say_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_sidecar_config(write(tmp_path, text), {})
    assert message in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_sidecar_config(tmp_path / "absent.yaml", {})


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8787") == ("127.0.0.1", 8787)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("8787", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_model_resolution() -> None:
    open_list = ModelSettings()
    assert open_list.resolve("anything") == "anything" and open_list.resolve(None) is None
    strict = ModelSettings(allow=["gpt-4o-mini"], default="gpt-4o-mini")
    assert strict.resolve(None) == "gpt-4o-mini" and strict.resolve("") == "gpt-4o-mini"
    assert strict.resolve("gpt-4o") is None
    with pytest.raises(ValidationError):
        ModelSettings(allow=["a"], default="b")
