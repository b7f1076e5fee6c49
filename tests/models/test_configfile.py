"""Settings coercion (models.core.configfile): each value the appliance or the coordinator
reads from TOML, the environment or the command line becomes its field's type, or a
clear error naming the setting."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from models.core import configfile


class SettingError(ValueError):
    pass


@dataclass
class Settings:
    data_dir: Path = Path("/var/lib/x")
    ca: Path | None = None
    port: int = 8080
    gpio: bool = True
    keys: list[str] = field(default_factory=list)


def load(tmp_path: Path, toml: str = "", **overrides) -> Settings:
    config = tmp_path / "x.toml"
    config.write_text(toml)
    return configfile.load(Settings, "TESTCFG_", config, overrides, SettingError)


def test_values_become_their_fields_types(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTCFG_GPIO", "off")
    s = load(tmp_path, 'data_dir = "~/d"\nca = ""\nport = 8081.0\n')
    assert s.data_dir == Path.home() / "d" and s.ca is None
    assert s.port == 8081 and type(s.port) is int and s.gpio is False
    assert load(tmp_path, "gpio = false\nport = 9000\n").gpio is False


@pytest.mark.parametrize("toml, message", [
    ('data_dir = ""', "data_dir: '' is not a valid Path"),   # required: no silent None
    ("port = 2.7", "port: 2.7 is not a valid int"),          # no silent truncation
    ("port = true", "port: True is not a valid int"),
    ("gpio = 5", "gpio: 5 is not a valid bool"),             # only true/false or words
    ('gpio = "maybe"', "gpio: 'maybe' is not a valid bool"),
    ("prot = 1", "unknown setting"),
])
def test_bad_values_are_refused_by_name(tmp_path, toml, message):
    with pytest.raises(SettingError, match=message.replace("(", r"\(").replace("|", r"\|")):
        load(tmp_path, toml)


def test_an_empty_environment_value_for_a_required_path_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTCFG_DATA_DIR", "")
    with pytest.raises(SettingError, match="data_dir"):
        load(tmp_path)


def test_a_list_from_the_environment_is_comma_separated(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTCFG_KEYS", "/etc/a.pub, /etc/b.pub,")
    assert load(tmp_path).keys == ["/etc/a.pub", "/etc/b.pub"]
    assert load(tmp_path, 'keys = ["x,y"]\n', keys=None).keys == ["/etc/a.pub", "/etc/b.pub"]
    monkeypatch.delenv("TESTCFG_KEYS")
    assert load(tmp_path, 'keys = ["x,y"]\n').keys == ["x,y"]  # TOML lists stay as written
