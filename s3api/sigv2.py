"""AWS Signature Version 2 for presigned URLs only (`?AWSAccessKeyId=&Expires=&Signature=`).

botocore (and so aws cli v1 `s3 presign` and boto3 `generate_presigned_url` with the default
configuration) and s3cmd `signurl` still presign with SigV2. Requests signed in an Authorization
header must use SigV4; only this query form of SigV2 is accepted.

The string to sign (AWS "REST authentication, query string"):

    METHOD \\n Content-MD5 \\n Content-Type \\n Expires \\n
    x-amz-*:value \\n ...            (sorted, lower-case names)
    /bucket/raw-path[?sub-resources] (decoded values, sorted by name)

The path is the one on the wire (percent-encoded as the client sent it, which is what signers
sign); with virtual-hosted style it is prefixed by "/bucket". Content-Type, Content-MD5 and
x-amz-* come from the request headers, or else from the query, where botocore moves them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime

from s3api.errors import S3Error, expired_request

QUERY_PARAMS = frozenset({"AWSAccessKeyId", "Expires", "Signature"})
# Query parameters that are part of the signed resource (AWS's list, as botocore signs it).
SUB_RESOURCES = frozenset({
    "accelerate", "acl", "analytics", "cors", "defaultObjectAcl", "delete", "inventory",
    "lifecycle", "location", "logging", "metrics", "notification", "object-lock", "partNumber",
    "policy", "replication", "requestPayment", "response-cache-control",
    "response-content-disposition", "response-content-encoding", "response-content-language",
    "response-content-type", "response-expires", "restore", "select", "select-type",
    "storageClass", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
    "versions", "website",
})


def is_presigned(names: set[str]) -> bool:
    return names >= QUERY_PARAMS


def string_to_sign(method: str, resource_path: str, query: list[tuple[str, str]],
                   headers: dict[str, str]) -> str:
    """The SigV2 query-auth string to sign; `headers` lower-cased, `query` decoded pairs."""
    params = dict(query)
    amz: dict[str, str] = {}
    for name, value in [*query, *headers.items()]:  # a header wins over a query parameter
        lname = name.lower()
        if lname.startswith("x-amz-"):
            amz[lname] = value.strip()
    lines = [
        method.upper(),
        headers.get("content-md5", params.get("content-md5", "")).strip(),
        headers.get("content-type", params.get("content-type", "")).strip(),
        params["Expires"],
        *(f"{name}:{amz[name]}" for name in sorted(amz)),
    ]
    subs = sorted((name, value) for name, value in query if name in SUB_RESOURCES)
    resource = resource_path
    if subs:
        resource += "?" + "&".join(f"{name}={value}" if value else name for name, value in subs)
    return "\n".join(lines) + "\n" + resource


def verify_presigned(method: str, resource_path: str, query: list[tuple[str, str]],
                     headers: dict[str, str], now: datetime,
                     secret_for: Callable[[str], str | None]) -> str:
    """Check a SigV2 presigned request; returns the access key. `resource_path` is "/bucket/key"
    as on the wire (for virtual-hosted style, "/bucket" + the path)."""
    params = dict(query)
    access_key = params["AWSAccessKeyId"]
    try:
        expires = int(params["Expires"])
    except ValueError:
        raise S3Error("AccessDenied", "Invalid date (should be seconds since epoch): "
                      + params["Expires"]) from None
    if now.timestamp() > expires:
        expiry = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise expired_request(expiry, now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    secret = secret_for(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
    to_sign = string_to_sign(method, resource_path, query, headers)
    digest = hmac.new(secret.encode(), to_sign.encode("utf-8", "surrogateescape"), hashlib.sha1)
    expected = base64.b64encode(digest.digest())
    provided = params["Signature"].strip().encode("utf-8", "replace")
    if not hmac.compare_digest(expected, provided):
        raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=access_key, StringToSign=to_sign,
                      SignatureProvided=params["Signature"])
    return access_key
