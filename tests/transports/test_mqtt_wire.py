"""The MQTT pieces that need no broker: the wire format, addresses, the agent's ``[mqtt]``
settings, controller credentials from the environment, and the Mosquitto files generator."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleetgate.agent.config import parse_config
from fleetgate.agent.hygiene import hygiene_warnings
from fleetgate.agent.server import dump_config
from fleetgate.cli.agent_cmd import _with_broker
from fleetgate.cli.main import EXIT_INPUT, EXIT_OK, run
from fleetgate.core import mqttwire as wire
from fleetgate.errors import InputError, ValidationError
from fleetgate.transports.mosquitto_auth import acl_text
from fleetgate.transports.mqtt import MqttCredentials


def test_addresses_name_broker_and_device_and_refuse_what_would_widen_a_topic() -> None:
    b, seg = wire.parse_broker("mqtt://127.0.0.1:1883/rpi-07")
    assert (b.host, b.port, b.tls, seg) == ("127.0.0.1", 1883, False, "rpi-07")
    b, seg = wire.parse_broker("MQTTS://broker.example")
    assert (b.port, b.tls, seg, b.key) == (8883, True, "", "mqtts://broker.example:8883")
    assert wire.parse_broker("mqtt://[::1]:1884/x")[0].host == "::1"
    for bad in (
        "http://h/x",
        "mqtt://h:0/x",
        "mqtt://h:99999",
        "mqtt:///x",
        "mqtt://h/a/b",
        "mqtt://h/+",
        "mqtt://h/#",
    ):
        with pytest.raises(wire.WireError):
            wire.parse_broker(bad)
    assert wire.split_topic("fleetgate/v1/rpi-07/reply") == ("rpi-07", "reply")
    assert wire.split_topic("fleetgate/v1/a/b/reply") is None
    assert wire.split_topic("other/v1/a/reply") is None


def test_messages_round_trip_and_malformed_ones_are_named_without_the_token() -> None:
    cmd = wire.parse_command(wire.encode_command("stage", "d1", "s3cret", {"seq": 3}))
    assert (cmd.command, cmd.device, cmd.token, cmd.body) == ("stage", "d1", "s3cret", {"seq": 3})
    assert "s3cret" not in repr(cmd)
    assert wire.parse_reply(wire.encode_reply(409, {"error": "busy"})) == (409, {"error": "busy"})
    with pytest.raises(wire.WireError, match="token"):
        wire.parse_command(json.dumps({"command": "ping", "device": "d", "token": 5}).encode())
    with pytest.raises(wire.WireError, match="status"):
        wire.parse_reply(b'{"status": true, "body": {}}')
    with pytest.raises(wire.WireError, match="JSON"):
        wire.parse_reply(b"\xff")
    with pytest.raises(wire.WireError, match="deeply"):
        wire.parse_reply(b"[" * 200_000)
    with pytest.raises(wire.WireError, match="online"):
        wire.parse_status(b'{"at": 1}')


def _agent(tmp_path: Path, mqtt: str, agent_extra: str = "") -> dict[str, object]:
    import tomllib

    pub = tmp_path / "k.pub"
    pub.write_text("-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n")
    return tomllib.loads(
        '[device]\nid = "rpi-07"\nhardware = "pi4"\n'
        f'[agent]\ndata_dir = "d"\ntoken_env = "FG_T"\npublic_key = "{pub}"\n{agent_extra}\n' + mqtt
    )


def test_agent_mqtt_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FG_T", "tok")
    (tmp_path / "pw").write_text("broker-pw\n")
    src = tmp_path / "agent.toml"
    cfg = parse_config(
        _agent(tmp_path, '[mqtt]\nbroker = "mqtt://10.0.0.5:1883"\npassword_file = "pw"\n'), src
    )
    assert cfg.mqtt is not None
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("rpi-07", "broker-pw")
    assert not cfg.http_listen  # a broker and no explicit listen: MQTT only
    assert "broker-pw" not in repr(cfg) and "broker-pw" not in dump_config(cfg)
    assert any("mqtt.broker" in w and "clear" in w for w in hygiene_warnings(cfg))
    both = parse_config(
        _agent(tmp_path, '[mqtt]\nbroker = "mqtt://127.0.0.1"\n', 'listen = "127.0.0.1:7601"'),
        src,
    )
    assert both.http_listen and both.mqtt is not None and both.mqtt.password is None
    assert not any("mqtt.broker" in w for w in hygiene_warnings(both))  # loopback
    assert parse_config(_agent(tmp_path, ""), src).mqtt is None


def test_agent_mqtt_problems_name_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FG_T", "tok")
    monkeypatch.delenv("FG_NOPE", raising=False)
    src = tmp_path / "agent.toml"
    with pytest.raises(ValidationError) as err:
        parse_config(
            _agent(
                tmp_path,
                '[mqtt]\nbroker = "mqtt://h/with-path"\npassword_env = "FG_NOPE"\n'
                'password_file = "nope"\nkeepalive_s = 1\n',
            ),
            src,
        )
    text = "\n".join(err.value.problems)
    assert f"{src}: mqtt.broker: expected mqtt://HOST[:PORT] without a path" in text
    assert f"{src}: mqtt.password_env: set at most one" in text
    assert f"{src}: mqtt.keepalive_s: expected an integer >= 5" in text
    with pytest.raises(ValidationError, match=r"mqtt\.broker: missing"):
        parse_config(_agent(tmp_path, "[mqtt]\n"), src)
    with pytest.raises(ValidationError, match=r"mqtt\.password_file: cannot read"):
        parse_config(_agent(tmp_path, '[mqtt]\nbroker = "mqtt://h"\npassword_file = "x"\n'), src)


def test_broker_flag_overrides_the_file_and_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FG_T", "tok")
    cfg = parse_config(_agent(tmp_path, ""), tmp_path / "agent.toml")
    over = _with_broker(cfg, "mqtt://127.0.0.1:1999")
    assert over.mqtt.broker == "mqtt://127.0.0.1:1999" and over.mqtt.username == "rpi-07"
    with pytest.raises(InputError, match="--broker"):
        _with_broker(cfg, "tcp://h")
    with pytest.raises(InputError, match="without a path"):
        _with_broker(cfg, "mqtt://h/rpi-07")


def test_controller_credentials_from_the_environment(tmp_path: Path) -> None:
    creds = MqttCredentials.from_env(
        {"FLEETGATE_MQTT_USERNAME": "c", "FLEETGATE_MQTT_PASSWORD": "p"}
    )
    assert (creds.username, creds.password) == ("c", "p") and "'p'" not in repr(creds)
    (tmp_path / "pw").write_text("from-file\n")
    env = {"FLEETGATE_MQTT_USERNAME": "c", "FLEETGATE_MQTT_PASSWORD_FILE": str(tmp_path / "pw")}
    assert MqttCredentials.from_env(env).password == "from-file"
    assert MqttCredentials.from_env({}).username is None  # anonymous
    with pytest.raises(InputError, match="not both"):
        MqttCredentials.from_env({**env, "FLEETGATE_MQTT_PASSWORD": "p"})
    with pytest.raises(InputError, match="without FLEETGATE_MQTT_USERNAME"):
        MqttCredentials.from_env({"FLEETGATE_MQTT_PASSWORD": "p"})
    with pytest.raises(InputError, match="cannot read"):
        MqttCredentials.from_env({"FLEETGATE_MQTT_PASSWORD_FILE": str(tmp_path / "no")})


def test_mosquitto_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("rpi-02  # the second\n\n")
    out = tmp_path / "broker"
    assert run(["broker", "mosquitto-config", "--out", str(out), "--device", "rpi-01",
                "--devices-file", str(ids)]) == EXIT_OK  # fmt: skip
    printed = capsys.readouterr().out
    users = [line.split(":", 1)[0] for line in (out / "passwd").read_text().splitlines()]
    assert users == ["fleetgate-controller", "rpi-01", "rpi-02"]
    assert (out / "acl").read_text() == acl_text("fleetgate-controller")
    assert "pattern write fleetgate/v1/%u/reply" in (out / "acl").read_text()
    for f in ("passwd", "acl", "credentials/rpi-01.password"):
        assert stat.S_IMODE((out / f).stat().st_mode) == 0o600
    pw = (out / "credentials" / "rpi-01.password").read_text().strip()
    assert len(pw) >= 24 and pw not in printed and pw not in (out / "passwd").read_text()
    assert "allow_anonymous false" in (out / "mosquitto.conf").read_text()

    bad = tmp_path / "bad"
    assert run(["broker", "mosquitto-config", "--out", str(bad), "--device", "a/#"]) == EXIT_INPUT
    assert not bad.exists()
    assert "a broker user must match" in capsys.readouterr().err
    assert run(["broker", "mosquitto-config", "--out", str(bad), "--device", "a", "--device",
                "a"]) == EXIT_INPUT  # fmt: skip
