"""Harness for the contract tests: real RabbitMQ, real service binaries.

Each test module gets a vhost of its own (made and removed through the
management API) and starts the service binaries that cargo built, against
it, each on a port it picks itself (HTTP_ADDR port 0) and prints. Nothing here knows a queue, exchange or message name:
those come from docs/asyncapi.yaml (see asyncapi_client.py).

Settings (environment):
- SERVICE_BIN_DIR: where `order-service` and `fulfillment-service` are
  (default: $CARGO_TARGET_DIR/debug, else target/debug)
- TEST_AMQP_BASE: the broker without a vhost (amqp://guest:guest@127.0.0.1:5672)
- TEST_RABBITMQ_MANAGEMENT: the management API (http://guest:guest@127.0.0.1:15672)
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"


def bin_dir() -> Path:
    if "SERVICE_BIN_DIR" in os.environ:
        return Path(os.environ["SERVICE_BIN_DIR"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug"


def amqp_base() -> str:
    return os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")


def management_base() -> str:
    return os.environ.get("TEST_RABBITMQ_MANAGEMENT", "http://guest:guest@127.0.0.1:15672")


def eventually(what: str, deadline_s: float, check):
    """Calls `check` every 50 ms until it returns something other than
    None; fails with `what` and the last error at the deadline."""
    start = time.monotonic()
    last_error = None
    while True:
        try:
            value = check()
            if value is not None:
                return value
        except Exception as e:  # noqa: BLE001 - reported at the deadline
            last_error = e
        if time.monotonic() - start > deadline_s:
            raise AssertionError(
                f"timed out after {deadline_s}s waiting for {what}; last error: {last_error!r}"
            )
        time.sleep(0.05)


class Management:
    """The RabbitMQ management API, with the credentials of its URL."""

    def __init__(self, base: str):
        parts = urllib.parse.urlsplit(base)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.auth = f"Basic {token}"

    def request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("authorization", self.auth)
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                text = resp.read()
                return json.loads(text) if text else None
        except urllib.error.URLError as e:
            if isinstance(e, urllib.error.HTTPError):
                raise AssertionError(f"{method} {path}: {e.code} {e.read()[:200]!r}") from e
            raise AssertionError(
                f"cannot reach the RabbitMQ management API at {self.base}: is RabbitMQ "
                f"running with the management plugin? (./scripts/test.sh starts it): {e}"
            ) from e


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class Vhost:
    """A vhost of its own for one test module, deleted afterwards."""

    def __init__(self, label: str):
        self.api = Management(management_base())
        self.name = f"test-py-{label}-{uuid.uuid4().hex}"
        self.api.request("PUT", f"/api/vhosts/{quote(self.name)}", {})
        self.api.request(
            "PUT",
            f"/api/permissions/{quote(self.name)}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        self.amqp_url = f"{amqp_base()}/{quote(self.name)}"

    def delete(self):
        try:
            self.api.request("DELETE", f"/api/vhosts/{quote(self.name)}")
        except AssertionError:
            pass


def http(method: str, url: str, body=None, timeout: float = 10):
    """(status, parsed JSON or text) of one request; never raises on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text.decode(errors="replace")


class Service:
    """One service binary running as a child process against a vhost."""

    def __init__(self, binary: str, amqp_url: str, data_dir: Path, env: dict[str, str]):
        path = bin_dir() / binary
        if not path.exists():
            raise AssertionError(
                f"{path} not found: build the binaries first (`cargo build --workspace --bins`)"
            )
        self.name = binary
        self.log_path = data_dir / f"{binary}.log"
        full_env = dict(os.environ)
        full_env.update(
            {
                "AMQP_URL": amqp_url,
                # Port 0: the service binds a free port and prints it.
                "HTTP_ADDR": "127.0.0.1:0",
                "STORE_URL": f"sqlite://{data_dir / (binary + '.db')}",
                "RUST_LOG": os.environ.get("TEST_SERVICE_LOG", "warn"),
            }
        )
        full_env.update(env)
        self.log = open(self.log_path, "ab")
        # The log is appended to: this run's lines start here.
        self.log_from = self.log.tell()
        self.process = subprocess.Popen(
            [str(path)], env=full_env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )
        port = eventually(f"{binary} to say which port it listens on", 30, self._port)
        self.base_url = f"http://127.0.0.1:{port}"
        eventually(f"{binary} /readyz", 20, self._ready)

    def _exited(self):
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}"
            )

    def _port(self):
        """The port of the `<name> listening on port <port>` line the
        service prints on stdout once it has bound it."""
        self._exited()
        with open(self.log_path, "rb") as log:
            log.seek(self.log_from)
            text = log.read().decode(errors="replace")
        found = re.search(rf"^{re.escape(self.name)} listening on port (\d+)$", text, re.M)
        return int(found.group(1)) if found else None

    def _ready(self):
        self._exited()
        status, _ = http("GET", self.base_url + "/readyz", timeout=2)
        return True if status == 200 else None

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def vhost(request):
    v = Vhost(request.module.__name__.rsplit(".", 1)[-1].replace("_", "-"))
    yield v
    v.delete()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")
