"""S3 operations, routed by method, target (service, bucket, object) and sub-resource."""

from __future__ import annotations

from quart import Response

from s3api.errors import S3Error
from s3api.handlers import buckets, multipart, objects

# Sub-resources we know but do not implement: answer NotImplemented rather than acting as if
# they were absent (a PUT ?acl must not overwrite the object with its ACL document).
_UNSUPPORTED_BUCKET = ("acl", "policy", "cors", "lifecycle", "tagging", "website", "logging",
                       "notification", "replication", "encryption", "object-lock", "accelerate",
                       "requestPayment", "ownershipControls", "publicAccessBlock", "analytics",
                       "metrics", "inventory", "intelligent-tiering", "policyStatus")
_UNSUPPORTED_OBJECT = ("acl", "tagging", "retention", "legal-hold", "torrent", "restore",
                       "select", "attributes")


def _unsupported(query: dict[str, str], names: tuple[str, ...]) -> None:
    for name in names:
        if name in query:
            raise S3Error("NotImplemented", f"The '{name}' sub-resource is not implemented.")


async def route(req) -> Response:
    method = req.method
    if req.bucket is None:
        if method in ("GET", "HEAD"):
            return await buckets.list_buckets(req)
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="SERVICE")
    if req.key is None:
        q = req.query
        if method == "GET":
            if "location" in q:
                return await buckets.get_location(req)
            if "versioning" in q:
                return await buckets.get_versioning(req)
            if "versions" in q:
                return await buckets.list_versions(req)
            if "uploads" in q:
                return await multipart.list_uploads(req)
            _unsupported(q, _UNSUPPORTED_BUCKET)
            if q.get("list-type") == "2":
                return await buckets.list_objects(req, v2=True)
            return await buckets.list_objects(req, v2=False)
        if method == "POST" and "delete" in q:
            return await objects.delete_objects(req)
        _unsupported(q, _UNSUPPORTED_BUCKET)
        if method == "PUT":
            return await buckets.create_bucket(req)
        if method == "DELETE":
            return await buckets.delete_bucket(req)
        if method == "HEAD":
            return await buckets.head_bucket(req)
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="BUCKET")
    _unsupported(req.query, _UNSUPPORTED_OBJECT)
    if "uploadId" in req.query or (method == "POST" and "uploads" in req.query):
        return await _route_multipart(req)
    if method == "PUT":
        if "x-amz-copy-source" in req.headers:
            return await objects.copy_object(req)
        return await objects.put_object(req)
    if method in ("GET", "HEAD"):
        return await objects.get_object(req, head=method == "HEAD")
    if method == "DELETE":
        return await objects.delete_object(req)
    raise S3Error("MethodNotAllowed", Method=method, ResourceType="OBJECT")


async def _route_multipart(req) -> Response:
    """Object requests naming an upload (?uploadId=…), or starting one (POST ?uploads)."""
    method = req.method
    if method == "POST":
        return await (multipart.create(req) if "uploads" in req.query else multipart.complete(req))
    if method == "PUT":
        return await multipart.upload_part(req)
    if method == "GET":
        return await multipart.list_parts(req)
    if method == "DELETE":
        return await multipart.abort(req)
    raise S3Error("MethodNotAllowed", Method=method, ResourceType="OBJECT")
