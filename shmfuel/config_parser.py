"""shmfuel's configuration: ``from shmfuel import config``.

Each key is looked up, first hit wins, in:

1. a value set in code (``config.floatX = 'float64'``);
2. its environment variable (``SHMFUEL_FLOATX``, ...);
3. the configuration file, ``$SHMFUEL_CONFIG`` or else ``~/.shmfuelrc``;
4. its default.

A key with none of these raises :class:`~shmfuel.exceptions.ConfigurationError`
when read. The file holds ``key: value`` lines (a YAML mapping of scalars;
``#`` starts a comment). Unlike Fuel, ``floatX`` has a default, ``float32``,
so that ``Cast('floatX')`` and ``Padding`` work out of the box.

All environment variables shmfuel reads are listed here:

=========================  ====================  ============================
key                        environment variable  default
=========================  ====================  ============================
``data_path``              SHMFUEL_DATA_PATH     (none; ``os.pathsep`` list)
``local_data_path``        SHMFUEL_LOCAL_DATA_PATH  ``""``
``default_seed``           (file only)           ``1``
``extra_downloaders``      SHMFUEL_EXTRA_DOWNLOADERS ``[]`` (space separated)
``extra_converters``       SHMFUEL_EXTRA_CONVERTERS  ``[]`` (space separated)
``floatX``                 SHMFUEL_FLOATX        ``float32``
=========================  ====================  ============================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from shmfuel.exceptions import ConfigurationError

NOT_SET = object()


def _split_on(sep: str | None) -> Callable[[Any], list[str]]:
    def split(value: Any) -> list[str]:
        if isinstance(value, (list, tuple)):
            return list(value)
        return [part for part in str(value).split(sep) if part]
    return split


def _parse_file(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = line.partition(":")
            if not sep or not key.strip():
                raise ValueError(
                    f"{path}, line {number}: expected 'key: value', "
                    f"got {raw.strip()!r}")
            values[key.strip()] = value.strip().strip("'\"")
    return values


class Configuration:
    """Holds the configuration keys; see the module docstring."""

    def __init__(self) -> None:
        self.config: dict[str, dict[str, Any]] = {}

    def config_file(self) -> str:
        return os.environ.get(
            "SHMFUEL_CONFIG", os.path.expanduser("~/.shmfuelrc"))

    def load_yaml(self) -> None:
        """Read the configuration file, if there is one."""
        path = self.config_file()
        if not os.path.isfile(path):
            return
        for key, value in _parse_file(path).items():
            if key not in self.config:
                raise ValueError(
                    f"unknown configuration key {key!r} in {path}; known "
                    f"keys are {sorted(self.config)}")
            self.config[key]["yaml"] = value

    def __getattr__(self, key: str) -> Any:
        if key == "config" or key not in self.config:
            raise AttributeError(key)
        setting = self.config[key]
        if "value" in setting:
            value = setting["value"]
        elif setting["env_var"] and setting["env_var"] in os.environ:
            value = os.environ[setting["env_var"]]
        elif "yaml" in setting:
            value = setting["yaml"]
        elif setting["default"] is not NOT_SET:
            value = setting["default"]
        else:
            where = (f"set the environment variable {setting['env_var']}, "
                     if setting["env_var"] else "")
            raise ConfigurationError(
                f"configuration key {key!r} is not set and has no default: "
                f"{where}add '{key}: ...' to {self.config_file()}, or set "
                f"shmfuel.config.{key} in code")
        return setting["type"](value)

    def __setattr__(self, key: str, value: Any) -> None:
        if key != "config" and key in self.config:
            self.config[key]["value"] = value
        else:
            super().__setattr__(key, value)

    def add_config(self, key: str, type_: Callable[[Any], Any],
                   default: Any = NOT_SET, env_var: str | None = None) -> None:
        """Register a configuration key.

        Parameters
        ----------
        key : str
            The attribute name of the key.
        type_ : callable
            Applied to the raw value (a string from the environment or the
            file) on every read.
        default : object, optional
            Used when nothing else sets the key.
        env_var : str, optional
            Environment variable that sets the key.

        """
        self.config[key] = {"type": type_, "default": default,
                            "env_var": env_var}


config = Configuration()
config.add_config("data_path", _split_on(os.path.pathsep),
                  env_var="SHMFUEL_DATA_PATH")
config.add_config("local_data_path", str, default="",
                  env_var="SHMFUEL_LOCAL_DATA_PATH")
config.add_config("default_seed", int, default=1)
config.add_config("extra_downloaders", _split_on(None), default=[],
                  env_var="SHMFUEL_EXTRA_DOWNLOADERS")
config.add_config("extra_converters", _split_on(None), default=[],
                  env_var="SHMFUEL_EXTRA_CONVERTERS")
config.add_config("floatX", str, default="float32", env_var="SHMFUEL_FLOATX")
config.load_yaml()
