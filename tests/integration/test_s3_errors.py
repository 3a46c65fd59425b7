"""S3 error classification on the errors botocore really raises.

* moto's server (the stack's): ``NoSuchBucket``, ``NoSuchKey``;
* a second moto server started here with IAM authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``: moto checks
  credentials and IAM policies once that many requests were served): ``AccessDenied`` for a user without a
  policy, ``InvalidAccessKeyId`` for an unknown key;
* throttling: moto 5 has no fault injection for S3 (its ``/moto-api`` offers reset, seeding and a recorder,
  nothing that makes S3 answer 503/429), so a tiny HTTP reverse proxy on 127.0.0.1, in front of the stack's moto,
  answers boto3's real HTTP requests with ``503 SlowDown``, ``429`` or ``500 InternalError`` while its fault is
  set, and forwards them to moto otherwise;
* a closed port: ``EndpointConnectionError``.

And the classification drives the guard: a throttled call is retried, a missing bucket is not.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from airflow_etl_provider.core.errors import ErrorKind, classify_any, classify_s3
from airflow_etl_provider.core.guard import Guard
from airflow_etl_provider.core.retry import RetryPolicy

MOTO = f"http://127.0.0.1:{os.environ.get('ETL_STACK_S3_PORT', '45555')}"
ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>proxy</RequestId></Error>"
)


def _client(endpoint: str, key: str = "testing", secret: str = "testing"):
    import boto3
    from botocore.config import Config

    # botocore's own retries off: each call is exactly one HTTP request, and the error reaches the caller
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=10
        ),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raised(fn, *args, **kwargs) -> BaseException:
    with pytest.raises(Exception) as info:  # the class is asserted by the caller, on the real exception
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------------- moto


def test_missing_bucket_and_key_from_moto_are_system_errors(unique) -> None:
    from botocore.exceptions import ClientError

    s3 = _client(MOTO)
    err = _raised(s3.put_object, Bucket=f"no-such-bucket-{unique}", Key="k", Body=b"x")
    assert isinstance(err, ClientError) and err.response["Error"]["Code"] == "NoSuchBucket"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert classify_s3(err) is ErrorKind.SYSTEM and classify_any(err) is ErrorKind.SYSTEM

    bucket = f"errors-{unique}"
    s3.create_bucket(Bucket=bucket)
    err = _raised(s3.get_object, Bucket=bucket, Key="missing")
    assert isinstance(err, ClientError) and err.response["Error"]["Code"] == "NoSuchKey"
    assert classify_s3(err) is ErrorKind.SYSTEM  # any other 4xx


@pytest.fixture
def moto_with_auth(tmp_path) -> Iterator[str]:
    """A moto server of our own (the stack's runs without authentication) that enforces IAM after the first two
    requests, which create the user and its key."""
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "2"}
    moto = str(Path(sys.executable).parent / "moto_server")
    with open(tmp_path / "moto.log", "wb") as log:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "moto.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_access_denied_and_bad_keys_from_moto_with_iam_are_system_errors(moto_with_auth) -> None:
    import boto3
    from botocore.exceptions import ClientError

    iam = boto3.client(
        "iam",
        endpoint_url=moto_with_auth,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    iam.create_user(UserName="no-rights")  # request 1 (not authenticated)
    key = iam.create_access_key(UserName="no-rights")["AccessKey"]  # request 2
    s3 = _client(moto_with_auth, key["AccessKeyId"], key["SecretAccessKey"])
    err = _raised(s3.create_bucket, Bucket="denied")
    assert isinstance(err, ClientError) and err.response["Error"]["Code"] == "AccessDenied", err
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert classify_s3(err) is ErrorKind.SYSTEM and classify_any(err) is ErrorKind.SYSTEM

    err = _raised(_client(moto_with_auth, "AKIAUNKNOWNUNKNOWN00", "x" * 40).list_buckets)
    assert isinstance(err, ClientError) and err.response["Error"]["Code"] == "InvalidAccessKeyId", err
    assert classify_s3(err) is ErrorKind.SYSTEM


# ------------------------------------------------------------------------------------- the proxy


class FaultProxy:
    """An HTTP reverse proxy on 127.0.0.1 in front of moto. ``fault = (status, code)`` makes it answer every
    request with that S3 error instead of forwarding it; ``requests`` counts the requests it received."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.fault: tuple[int, str | None] | None = None
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.fault is not None:
                    status, code = proxy.fault
                    payload = (
                        ERROR_XML.format(code=code, message="injected by the test proxy").encode()
                        if code
                        else b""
                    )
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                conn.request(self.command, self.path, body=body, headers=headers)
                upstream_response = conn.getresponse()
                data = upstream_response.read()
                self.send_response(upstream_response.status)
                for k, v in upstream_response.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    p = FaultProxy(MOTO)
    yield p
    p.close()


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (429, None), (500, "InternalError")])
def test_throttling_and_server_errors_through_a_real_http_proxy_are_transient(
    proxy, unique, status, code
) -> None:
    from botocore.exceptions import ClientError

    s3 = _client(proxy.endpoint)
    bucket = f"throttle-{unique}"
    s3.create_bucket(Bucket=bucket)  # forwarded to moto: the proxy is transparent until told otherwise
    proxy.fault = (status, code)
    err = _raised(s3.put_object, Bucket=bucket, Key="k", Body=b"x")
    assert isinstance(err, ClientError)
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == status
    if code is not None:
        assert err.response["Error"]["Code"] == code
    assert classify_s3(err) is ErrorKind.TRANSIENT and classify_any(err) is ErrorKind.TRANSIENT


def test_a_closed_port_is_a_transient_connection_error() -> None:
    from botocore.exceptions import EndpointConnectionError

    err = _raised(_client(f"http://127.0.0.1:{_free_port()}").list_buckets)
    assert isinstance(err, EndpointConnectionError)
    assert classify_s3(err) is ErrorKind.TRANSIENT


def test_the_guard_retries_throttling_and_not_a_missing_bucket(proxy, unique) -> None:
    from botocore.exceptions import ClientError

    s3 = _client(proxy.endpoint)
    bucket = f"guarded-{unique}"
    s3.create_bucket(Bucket=bucket)
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02)

    proxy.fault, proxy.requests = (503, "SlowDown"), 0
    throttled = Guard(policy, None, classifier=classify_s3, op="s3 put")
    with pytest.raises(ClientError, match="SlowDown"):
        throttled.call(s3.put_object, Bucket=bucket, Key="k", Body=b"x")
    assert throttled.stats.attempts == 3 and proxy.requests == 3  # every attempt was a real request

    proxy.fault, proxy.requests = None, 0
    missing = Guard(policy, None, classifier=classify_s3, op="s3 put")
    with pytest.raises(ClientError, match="NoSuchBucket"):
        missing.call(s3.put_object, Bucket=f"absent-{unique}", Key="k", Body=b"x")
    assert missing.stats.attempts == 1 and proxy.requests == 1  # a system error is not retried

    ok = Guard(policy, None, classifier=classify_s3, op="s3 put")
    ok.call(s3.put_object, Bucket=bucket, Key="k", Body=b"x")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
