"""TLS settings of the PostgreSQL and MLflow clients travel in configuration and fail closed.

The local PostgreSQL runs without SSL (``SHOW ssl`` = off): a warehouse URL
that demands TLS must then refuse to connect rather than fall back to
plaintext, which shows the setting reaches libpq. MLflow's REST client takes
its CA bundle from ``MLFLOW_TRACKING_SERVER_CERT_PATH``; a tracking server
whose certificate the bundle does not vouch for is refused.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.exc

from medllm_pipelines.lib.common.warehouse import Warehouse
from medllm_pipelines_tests.postgres import throwaway_database
from medllm_pipelines_tests.tls import make_certificates


def test_a_warehouse_url_that_requires_tls_never_falls_back_to_plaintext() -> None:
    with throwaway_database("tls") as url:
        plain = Warehouse(url)
        try:
            assert plain.query("SELECT 1 AS one")["one"].tolist() == [1]
        finally:
            plain.dispose()
        strict = Warehouse(f"{url}?sslmode=require")
        try:
            with pytest.raises(sqlalchemy.exc.OperationalError, match="(?i)ssl"):
                strict.query("SELECT 1 AS one")
        finally:
            strict.dispose()


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A loopback TLS server with a certificate from a throwaway CA; it answers nothing useful."""
    ca_file, cert_file, key_file = make_certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], ca_file
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def test_mlflow_refuses_a_tracking_server_its_ca_bundle_does_not_vouch_for(
    tls_listener: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    port, ca_file = tls_listener
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", "/etc/ssl/certs/ca-certificates.crt")  # not our CA
    with pytest.raises(MlflowException, match="(?i)ssl|certificate"):
        MlflowClient(tracking_uri=f"https://127.0.0.1:{port}").search_experiments()
    # With our CA the TLS handshake succeeds and MLflow gets as far as the HTTP answer (404 here).
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(ca_file))
    with pytest.raises(MlflowException) as answered:
        MlflowClient(tracking_uri=f"https://127.0.0.1:{port}").search_experiments()
    assert "certificate" not in str(answered.value).lower()
