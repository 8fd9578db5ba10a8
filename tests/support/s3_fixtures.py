"""moto's S3 server mode as a real process: the S3 endpoint of the tests.

moto runs with its IAM checks on (after the few unauthenticated calls that create the
test's user and key), so wrong credentials are really refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import httpx
import pytest

BUCKET = "models"
PREFIX = "repo"
# The calls moto lets through unauthenticated: create the user, its policy, its key.
SETUP_CALLS = 3
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3:
    endpoint: str
    key_id: str
    secret: str

    def env(self, secret: str | None = None, endpoint: bool = True) -> dict[str, str]:
        """An environment with these credentials and no user's AWS files."""
        env = {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
        return env

    def client(self) -> object:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
        )  # fmt: skip


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(endpoint + "/moto-api/", timeout=1)
                break
            assert time.monotonic() < deadline, "moto did not start:\n" + log.read_text()
            time.sleep(0.1)
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="setup", aws_secret_access_key="setup",
        )  # fmt: skip
        iam.create_user(UserName="puller")
        iam.put_user_policy(UserName="puller", PolicyName="all", PolicyDocument=ALLOW_ALL)
        key = iam.create_access_key(UserName="puller")["AccessKey"]
        s3 = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        s3.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        yield s3
    finally:
        proc.terminate()
        proc.wait(10)
