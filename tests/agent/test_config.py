"""AgentConfig from a TOML file and PORTSLICE_AGENT_* variables."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_it_has_defaults_for_everything_but_needs_no_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""), environ={})
    assert config == AgentConfig(hostname=socket.gethostname())
    assert config.usage_interval == 5.0
    assert config.metrics_address == ("127.0.0.1", 9465)
    assert config.socket_mode == 0o660
    assert config.queue == f"agent.{socket.gethostname()}"


def test_it_reads_every_key_from_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
hostname = "edge-fra1-07"
broker_url = "amqp://guest:guest@127.0.0.1:5672//"
keys_path = "/etc/portslice/keys"
state_dir = "/srv/state"
manage_nftables = false
manage_port_range = false
port_range_mode = "exact"
route_source = "2001:DB8::7"
usage_interval = 2.5
metrics_address = "[::1]:9100"
socket_path = "/run/x.sock"
socket_mode = "0600"
""",
    )
    config = load_config(path, environ={})
    assert config == AgentConfig(
        hostname="edge-fra1-07",
        broker_url="amqp://guest:guest@127.0.0.1:5672//",
        keys_path=Path("/etc/portslice/keys"),
        state_dir=Path("/srv/state"),
        manage_nftables=False,
        manage_port_range=False,
        port_range_mode="exact",
        route_source="2001:db8::7",
        usage_interval=2.5,
        metrics_address=("::1", 9100),
        socket_path=Path("/run/x.sock"),
        socket_mode=0o600,
    )


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'hostname = "from-file"\nmanage_nftables = true\n')
    env = {
        "PORTSLICE_AGENT_HOSTNAME": "from-env",
        "PORTSLICE_AGENT_MANAGE_NFTABLES": "no",
        "PORTSLICE_AGENT_METRICS_ADDRESS": "off",
    }
    config = load_config(path, environ=env)
    assert config.hostname == "from-env"
    assert config.manage_nftables is False
    assert config.metrics_address is None


def test_it_finds_the_file_through_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, 'hostname = "edge-7"\n')
    assert load_config(environ={"PORTSLICE_AGENT_CONFIG": str(path)}).hostname == "edge-7"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "PORTSLICE_AGENT_USAGE_INTERVAL",
            "soon",
            "$PORTSLICE_AGENT_USAGE_INTERVAL: usage_interval='soon'",
        ),
        ("PORTSLICE_AGENT_USAGE_INTERVAL", "0", "usage_interval='0' is invalid"),
        ("PORTSLICE_AGENT_MANAGE_NFTABLES", "maybe", "manage_nftables='maybe' is invalid"),
        ("PORTSLICE_AGENT_METRICS_ADDRESS", "9465", "metrics_address='9465'"),
        ("PORTSLICE_AGENT_METRICS_ADDRESS", "host:99999", "port outside 0-65535"),
        ("PORTSLICE_AGENT_HOSTNAME", "two words", "hostname='two words'"),
        ("PORTSLICE_AGENT_SOCKET_MODE", "rw", "socket_mode='rw'"),
        ("PORTSLICE_AGENT_STATE_DIR", " ", "state_dir=' ' is invalid (must not be empty)"),
        (
            "PORTSLICE_AGENT_PORT_RANGE_MODE",
            "narrow",
            "port_range_mode='narrow' is invalid (expected one of cover, exact)",
        ),
        ("PORTSLICE_AGENT_ROUTE_SOURCE", "shared", "route_source='shared' is invalid"),
    ],
)
def test_it_names_the_key_and_value_of_a_bad_setting(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={name: value, "PORTSLICE_AGENT_CONFIG": "/dev/null"})
    assert message in str(caught.value)


def test_it_refuses_unknown_keys_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'brokr_url'"):
        load_config(_write(tmp_path, 'brokr_url = "x"\n'), environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "hostname = \n"), environ={})
    with pytest.raises(ConfigError, match="usage_interval=\\[1\\] is invalid"):
        load_config(_write(tmp_path, "usage_interval = [1]\n"), environ={})


def test_a_missing_file_is_an_error_not_a_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml", environ={})
