"""QuantConfig as JSON: read, edit, save and load a configuration (e.g. the one a mixed
precision search chose).

    save_config(config, "config.json")
    config = load_config("config.json")          # == the saved config

The JSON is a plain object with the QuantConfig's fields; a QScheme is an object with its
fields, an override an object {"weight": ..., "activation": ...}. Loading goes through the
QuantConfig constructor, so a hand-edited file is validated like code (a misspelt field or
an unknown op type is a QuantizationError naming it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

from qcompiler.errors import LoadError
from qcompiler.quantization.config import QOverride, QScheme, QuantConfig

_SCHEME_FIELDS = ("weight", "activation", "non_mac_activation")


def config_to_dict(config: QuantConfig) -> dict:
    data = {}
    for item in fields(config):
        value = getattr(config, item.name)
        if isinstance(value, QScheme):
            value = asdict(value)
        elif isinstance(value, frozenset):
            value = sorted(value)
        elif item.name in ("op_type_overrides", "node_overrides"):
            value = {key: {role: None if getattr(o, role) is None else asdict(getattr(o, role))
                           for role in ("weight", "activation")} for key, o in value.items()}
        elif hasattr(value, "items"):
            value = dict(value)
        data[item.name] = value
    return data


def config_from_dict(data: dict) -> QuantConfig:
    data = dict(data)
    for name in _SCHEME_FIELDS:
        if data.get(name) is not None:
            data[name] = QScheme(**data[name])
    for name in ("op_type_overrides", "node_overrides"):
        if name in data:
            data[name] = {key: QOverride(**{role: None if scheme is None else QScheme(**scheme)
                                            for role, scheme in override.items()})
                          for key, override in data[name].items()}
    return QuantConfig(**data)


def save_config(config: QuantConfig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
    return path


def load_config(path: str | os.PathLike) -> QuantConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LoadError(f"cannot read a QuantConfig from {path}: {error}") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path} holds a JSON {type(data).__name__}, not a QuantConfig object")
    return config_from_dict(data)
