"""S3 on 127.0.0.1 with moto's threaded server, for stores rooted at ``s3://bucket/prefix``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SESSION_TOKEN": "testing"}


@contextlib.contextmanager
def moto_s3(bucket: str = "bzpipe-test") -> Iterator[str]:
    """Start moto's S3 server on a free port, point ``AWS_ENDPOINT_URL_S3`` at it, create ``bucket``.

    Yields the endpoint URL; restores the environment afterwards.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*_ENV, "AWS_ENDPOINT_URL_S3")}
    os.environ.update(_ENV)
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def list_objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object under ``prefix``: key -> size."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out
