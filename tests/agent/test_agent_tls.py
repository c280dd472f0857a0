"""Transport hygiene (issue 10, deliverable 7), on real agent processes, with a throw-away CA
made here: the agent serves TLS and requires a client certificate from its client CA (mutual
TLS), the controller's ``HttpTransport`` reaches it over ``https://`` with a CA bundle and a
client certificate, fetches verify the distribution point against ``ca_bundle`` and a pinned
certificate fingerprint; and ``--strict`` refuses exposed configurations (exit 2)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from agent_harness import AGENT_PYTHON, REPO, TOKEN, AgentProc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetgate.core.model import Arch, Device, Resources
from fleetgate.transports.base import DeviceRefusal
from fleetgate.transports.http import HttpTransport, controller_tls
from fleetgate.transports.tokens import TokenSource


# -- a throw-away PKI -------------------------------------------------------------------------
@dataclass
class Issued:
    cert: Path
    key: Path
    der: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(
    dir_: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Issued:
    key_path, cert_path = dir_ / f"{stem}.key", dir_ / f"{stem}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))


class CA:
    def __init__(self, dir_: Path, name: str) -> None:
        dir_.mkdir(parents=True, exist_ok=True)
        self.dir, self.name = dir_, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = dir_ / f"{name}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return _write(self.dir, f"{self.name}-{cn}", key, builder.sign(self.key, hashes.SHA256()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pki")
    ca, other = CA(root, "fleet-ca"), CA(root, "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("device", server=True),
        "client": ca.issue("controller", server=False),
        "rogue_client": other.issue("controller", server=False),
        "rogue_server": other.issue("blobs", server=True),
        "blobs": ca.issue("blobs", server=True),
    }


def _client_ctx(ca: CA, client: Issued | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def _tls_agent(make_agent, pki: dict, extra: str = "", name: str = "a") -> AgentProc:
    server = pki["server"]
    tls = (
        f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n'
        f'tls_client_ca = "{pki["ca"].pem}"\n{extra}'
    )
    a = make_agent(name, start=False, agent_extra=tls)
    a.use_tls(_client_ctx(pki["ca"], pki["client"]))
    return a.start()


def _device(a: AgentProc) -> Device:
    return Device(
        id=a.device_id,
        hardware="test-board",
        arch=Arch.X86_64,
        group="lab",
        address=a.base,
        resources=Resources(1024, 1024),
        token_env="FG_AGENT_TOKEN",
    )


def test_the_agent_serves_mutual_tls_only(make_agent, pki):
    a = _tls_agent(make_agent, pki)
    assert a.get("/v1/ping")[0] == 200
    assert "listening on https://" in a.log_text()
    # No client certificate, or one from another CA: the handshake fails, no HTTP is read.
    for client in (None, pki["rogue_client"]):
        a.ssl_context = _client_ctx(pki["ca"], client)
        with pytest.raises(OSError):
            a.get("/v1/ping", timeout=5)
    # Plain HTTP to the TLS port gets no agent answer either.
    a.base, a.ssl_context = f"http://127.0.0.1:{a.port}", None
    with pytest.raises(OSError):
        a.get("/v1/ping", timeout=5)

    async def controller() -> tuple[str, int, str]:
        tokens = TokenSource(environ={"FG_AGENT_TOKEN": TOKEN})
        dev = _device(a.use_tls(None))
        ctx = controller_tls(str(pki["ca"].pem), str(pki["client"].cert), str(pki["client"].key))
        async with HttpTransport(tokens, tls=ctx) as t:
            ping = await t.ping(dev)
            facts = await t.facts(dev)
        # Without the CA bundle the device's certificate does not verify: not retried.
        async with HttpTransport(tokens) as t:
            with pytest.raises(DeviceRefusal) as err:
                await t.ping(dev)
        assert not err.value.retryable
        return ping.id, facts.last_seq, err.value.code

    assert asyncio.run(controller()) == (a.device_id, 0, "tls-error")


class _TlsBlobs:
    """An HTTPS server for ``<blob_dir>/<sha256>`` at ``/v1/blobs/<sha256>``."""

    def __init__(self, blob_dir: Path, cert: Issued) -> None:
        blob_root = blob_dir

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = blob_root / self.path.rsplit("/", 1)[-1]
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _TlsBlobs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture
def tls_blobs(kit, pki) -> Iterator[_TlsBlobs]:
    with _TlsBlobs(kit.server.blob_dir, pki["blobs"]) as srv:
        yield srv


def test_fetches_verify_the_ca_bundle_and_the_pinned_certificate(make_agent, kit, pki, tls_blobs):
    url = f"{tls_blobs.url}/v1/blobs/{kit.v1.bundle.manifest.sha256}"
    body = {**kit.v1.stage, "url": url}
    good_pin = hashlib.sha256(pki["blobs"].der).hexdigest()
    wrong_pin = hashlib.sha256(pki["rogue_server"].der).hexdigest()
    ca = pki["ca"].pem
    cases = [
        ("system-store", "", False),  # the throw-away CA is not in the system store
        ("wrong-pin", f'ca_bundle = "{ca}"\nfetch_pin_sha256 = "{wrong_pin}"', False),
        ("ca-only", f'ca_bundle = "{ca}"', True),
        ("ca-and-pin", f'ca_bundle = "{ca}"\nfetch_pin_sha256 = "{good_pin.upper()}"', True),
    ]
    for name, extra, ok in cases:
        a = make_agent(name, agent_extra=extra)
        status, reply = a.post("stage", deployment_id="d", seq=1, **body)
        if ok:
            assert (status, reply["status"]) == (200, "staged"), (name, reply)
            assert a.release_entries() == [kit.v1.id]
        else:
            assert (status, reply["error"], reply["retryable"]) == (
                502,
                "download-failed",
                False,
            ), (name, reply)
            assert "TLS" in reply["message"], reply
            assert a.release_entries() == [], (name, a.release_entries())
        a.cleanup()
    # A pin that does not parse is a config error naming the field.
    bad = make_agent("bad-pin", start=False, agent_extra='fetch_pin_sha256 = "abc"')
    out = _cli(bad.config, "check")
    assert out.returncode == 2 and "agent.fetch_pin_sha256" in out.stderr


def _cli(config: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FG_TEST_TOKEN": TOKEN, "PYTHONPATH": str(REPO / "src")}
    env = {k: v for k, v in env.items() if not k.startswith("FLEETGATE_AGENT_")}
    return subprocess.run(
        [AGENT_PYTHON, "-m", "fleetgate", "agent", *args, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_strict_refuses_exposed_configurations(make_agent, kit, pki, tmp_path):
    a = make_agent(start=False)
    text = a.config.read_text()
    # Loopback, token in the environment, a private public key: nothing to say.
    quiet = _cli(a.config, "check", "--strict")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr

    def variant(name: str, new_text: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(new_text)
        return path

    open_listen = variant("listen", text.replace("127.0.0.1:", "0.0.0.0:"))
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o644)
    token_file = variant(
        "token", text.replace('token_env = "FG_TEST_TOKEN"', f'token_file = "{token}"')
    )
    pub = tmp_path / "pub.pem"
    pub.write_bytes(kit.pub_path.read_bytes())
    pub.chmod(0o666)
    open_key = variant("pubkey", text.replace(str(kit.pub_path), str(pub)))
    shared = tmp_path / "shared-data"
    shared.mkdir()
    shared.chmod(0o777)
    open_data = variant("data", text.replace(str(a.data_dir), str(shared)))
    for config, field in (
        (open_listen, "agent.listen"),
        (token_file, "agent.token_file"),
        (open_key, "agent.public_key"),
        (open_data, "agent.data_dir"),
    ):
        loose = _cli(config, "check")
        assert loose.returncode == 0 and f"warning: {config}: {field}" in loose.stderr
        strict = _cli(config, "check", "--strict")
        assert strict.returncode == 2 and field in strict.stderr, strict.stderr
        run = _cli(config, "run", "--strict")
        assert run.returncode == 2 and field in run.stderr, run.stderr
    # Fixed modes are quiet again; a non-loopback listen with TLS is fine.
    token.chmod(0o600)
    pub.chmod(0o644)
    assert _cli(token_file, "check", "--strict").returncode == 0
    assert _cli(open_key, "check", "--strict").returncode == 0
    server = pki["server"]
    tls_text = open_listen.read_text().replace(
        "[app]", f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\n[app]'
    )
    assert _cli(variant("tls", tls_text), "check", "--strict").returncode == 0
    # The agent itself says it too, in its log, when it runs without --strict.
    token.chmod(0o640)
    b = make_agent("b", start=False)
    b.config.write_text(
        b.config.read_text().replace('token_env = "FG_TEST_TOKEN"', f'token_file = "{token}"')
    )
    b.start()
    assert "WARNING" in b.log_text() and "agent.token_file" in b.log_text()
    assert "not loopback" not in b.log_text()


class _Trickle:
    """Serves one blob at ``rate`` bytes/s: an attacker (or a broken mirror) that never drops
    the connection and never finishes (slow retrieval)."""

    def __init__(self, data: bytes, rate: int) -> None:
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                step = max(rate // 10, 1)
                for i in range(start, len(data), step):
                    if outer.stop.wait(0.1):
                        return
                    try:
                        self.wfile.write(data[i : i + step])
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/blob"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.mark.slow
def test_a_slow_retrieval_is_abandoned_not_waited_for(make_agent, kit):
    import time

    blob = (kit.server.blob_dir / kit.v1.bundle.manifest.sha256).read_bytes()
    with _Trickle(blob, rate=200) as trickle:  # 200 B/s: hours for the bundle
        a = make_agent(agent_extra="min_fetch_kbps = 4\nfetch_rate_window_s = 0.5")
        t0 = time.monotonic()
        status, reply = a.post(
            "stage", deployment_id="d", seq=1, **{**kit.v1.stage, "url": trickle.url}
        )
        took = time.monotonic() - t0
    assert (status, reply["error"]) == (502, "download-failed"), reply
    assert "slow retrieval" in reply["message"] and took < 30, (took, reply)
    assert kit.v1.id not in a.release_entries()
