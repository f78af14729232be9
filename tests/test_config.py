import pytest

from shmfuel import config
from shmfuel.config_parser import Configuration, _split_on
from shmfuel.exceptions import ConfigurationError


def make(tmp_path, monkeypatch, text=None):
    if text is not None:
        path = tmp_path / "rc"
        path.write_text(text)
        monkeypatch.setenv("SHMFUEL_CONFIG", str(path))
    else:
        monkeypatch.setenv("SHMFUEL_CONFIG", str(tmp_path / "missing"))
    conf = Configuration()
    conf.add_config("data_path", _split_on(":"), env_var="SHMFUEL_DATA_PATH")
    conf.add_config("default_seed", int, default=1)
    conf.add_config("floatX", str, default="float32", env_var="SHMFUEL_FLOATX")
    conf.load_yaml()
    return conf


def test_defaults_and_global_config():
    assert config.default_seed == 1
    assert config.floatX in ("float32", "float64", "float16")


def test_precedence_code_env_file_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SHMFUEL_FLOATX", raising=False)
    conf = make(tmp_path, monkeypatch, "floatX: float16  # comment\ndefault_seed: 7\n")
    assert conf.floatX == "float16"
    assert conf.default_seed == 7
    monkeypatch.setenv("SHMFUEL_FLOATX", "float64")
    assert conf.floatX == "float64"
    conf.floatX = "int8"
    assert conf.floatX == "int8"


def test_unset_key_raises_with_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("SHMFUEL_DATA_PATH", raising=False)
    conf = make(tmp_path, monkeypatch)
    with pytest.raises(ConfigurationError, match="SHMFUEL_DATA_PATH"):
        conf.data_path
    monkeypatch.setenv("SHMFUEL_DATA_PATH", "/a:/b")
    assert conf.data_path == ["/a", "/b"]


def test_unknown_key_in_file(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown configuration key 'nope'"):
        make(tmp_path, monkeypatch, "nope: 1\n")


def test_malformed_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="line 1: expected 'key: value'"):
        make(tmp_path, monkeypatch, "just words\n")


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        config.no_such_key
