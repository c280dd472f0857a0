"""``fleetgate sim run`` as a real process: inventory out, ready line, serves, stops on SIGTERM,
and a SIGSTOP'ed simulator makes calls time out (retryable)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetgate.registry import load_inventory
from fleetgate.transports.base import CallTimeouts, TransportUnavailable
from fleetgate.transports.http import HttpTransport
from fleetgate.transports.tokens import TokenSource


class SimProc:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.out = tmp / "sim.out"
        self.inventory = tmp / "fleet.yaml"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetgate", "sim", "run",
                 "--registry-out", str(self.inventory), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.text().splitlines()
            if "ready" in lines:
                return dict(line.split(": ", 1) for line in lines if ": " in line)
            if self.proc.poll() is not None:
                raise AssertionError(f"sim exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"sim not ready:\n{self.text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., SimProc]]:
    procs: list[SimProc] = []

    def start(*args: str) -> SimProc:
        procs.append(SimProc(tmp_path, *args))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()


async def test_sim_run_serves_the_inventory_it_writes(start_sim, tmp_path):
    sim = start_sim("--devices", "30", "--seed", "4", "--fault", "hot:temp=90,group=plant-a")
    info = sim.wait_ready()
    assert info["inventory"] == str(sim.inventory)
    assert info["fault"] == "hot:temp=90,group=plant-a -> 10 device(s)"
    devices = load_inventory(sim.inventory)
    assert len(devices) == 30 and all(d.address.startswith(info["url"].split()[0]) for d in devices)
    assert {d.token_file for d in devices} == {info["token file"]}
    async with HttpTransport(TokenSource(), timeouts=CallTimeouts(health=1.0)) as t:
        for d in devices:
            sample = await t.health(d)
            assert sample.device_id == d.id and sample.app_up
            assert ((sample.temperature_c or 0) > 85) == (d.group == "plant-a")

        d = devices[0]
        os.kill(sim.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TransportUnavailable) as info_timeout:
                await t.health(d)
        finally:
            os.kill(sim.proc.pid, signal.SIGCONT)
        assert info_timeout.value.code == "timeout" and info_timeout.value.retryable
        assert (await t.health(d)).app_up  # back once it runs again

    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(15) == 0
    assert "stopping" in sim.text()


def test_sim_run_reuses_an_existing_token_file(start_sim, tmp_path):
    token = tmp_path / "keep.token"
    token.write_text("kept-token\n")
    sim = start_sim("--devices", "3", "--token-file", str(token))
    assert sim.wait_ready()["token file"] == str(token)
    assert token.read_text().strip() == "kept-token"
    assert {d.token_file for d in load_inventory(sim.inventory)} == {str(token)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "errors:rat=0.2"], "unknown key 'rat'"),
        (["--fault", "rollback-fail:device=orin-z-09"], "device 'orin-z-09' is not in the fleet"),
        (["--mix", "toaster:3"], "unknown hardware 'toaster'"),
        (["--devices", "0"], "--devices must be at least 1"),
        (["--broker", "mqtt://127.0.0.1:1883"], "--broker: only with --channel mqtt"),
        (["--channel", "mqtt", "--broker", "http://x"], "expected mqtt://HOST[:PORT]"),
        (["--channel", "mqtt", "--broker", "mqtt://127.0.0.1:1"], "cannot connect"),
    ],
)
def test_sim_run_input_errors_exit_2_with_one_line(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "fleetgate", "sim", "run",
         "--registry-out", str(tmp_path / "f.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "f.yaml").exists()


@pytest.mark.slow
async def test_sim_run_over_mqtt_connects_each_device_and_writes_mqtt_addresses(start_sim):
    sim = start_sim(
        "--channel", "mqtt", "--broker", "mqtt://127.0.0.1:1883", "--devices", "5",
        "--groups", "simcli-p,simcli-q", "--fault", "late:after=30,group=simcli-q",
    )  # fmt: skip
    info = sim.wait_ready()
    assert info["url"].startswith("mqtt://127.0.0.1:1883 (3 connected")
    devices = load_inventory(sim.inventory)
    assert [d.address for d in devices] == [f"mqtt://127.0.0.1:1883/{d.id}" for d in devices]
    async with HttpTransport(TokenSource(), timeouts=CallTimeouts(ping=2.0)) as t:
        for d in devices:
            if d.group == "simcli-p":
                assert (await t.ping(d)).id == d.id
            else:  # not connected yet: the broker has no session for it
                with pytest.raises(TransportUnavailable):
                    await t.ping(d)
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(15) == 0
