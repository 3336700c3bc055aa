"""S3 errors: the catalogue of codes, their XML body, and the one mapping from engine errors.

Handlers raise `S3Error("NoSuchKey", key=...)`; the code fixes the HTTP status and the default
message. Keyword arguments become extra elements of the XML body (`Key`, `BucketName`, ...), the
way AWS adds context to its errors.

Codes that are not AWS's (AWS has no filesystem underneath) are marked "Cartridge" below; they
keep the AWS shape so every client still shows the code and message.
"""

from __future__ import annotations

import re

from cartridgefs import errors as fs

# code -> (HTTP status, default message)
CATALOGUE: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "AuthorizationQueryParametersError": (400, "Error parsing the X-Amz-Credential parameter."),
    "BadDigest": (400, "The checksum you specified did not match what we received."),
    "BucketAlreadyExists": (409, "The requested bucket name is not available."),
    "BucketAlreadyOwnedByYou": (
        409,
        "Your previous request to create the named bucket succeeded and you already own it.",
    ),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty."),
    # Cartridge: a PUT of "dir/" (a directory marker) must have an empty body.
    "DirectoryObjectContainsData": (400, "A directory object (key ending in '/') must be empty."),
    # Cartridge: deleting "dir/" while the directory still holds objects.
    "DirectoryNotEmpty": (409, "The directory still contains objects."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed object size."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed object size."),
    # Cartridge: "a" cannot be a file while "a/..." objects exist, it is a directory.
    "ExistingObjectIsDirectory": (409, "The key names a directory that holds other objects."),
    "IncompleteBody": (400, "You did not provide the number of bytes specified by the length."),
    # Cartridge: the cartridge file has no free space (AWS never runs out; WebDAV's 507 fits).
    "InsufficientStorage": (507, "The storage has no space left for this request."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The AWS Access Key Id you provided does not exist in our records."),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
    "InvalidPartNumber": (416, "The requested partnumber is not satisfiable"),
    "InvalidPart": (
        400,
        "One or more of the specified parts could not be found. The part may not have been "
        "uploaded, or the specified entity tag may not match the part's entity tag.",
    ),
    "InvalidPartOrder": (
        400,
        "The list of parts was not in ascending order. Parts must be ordered by part number.",
    ),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidRequest": (400, "Invalid Request"),
    "KeyTooLongError": (400, "Your key is too long"),
    "MaxMessageLengthExceeded": (400, "Your request was too big."),
    "MalformedXML": (
        400,
        "The XML you provided was not well-formed or did not validate against our published schema",
    ),
    "MetadataTooLarge": (400, "Your metadata headers exceed the maximum allowed metadata size."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchUpload": (
        404,
        "The specified multipart upload does not exist. The upload ID might be invalid, or the "
        "multipart upload might have been aborted or completed.",
    ),
    # 304 carries no body: the handler sends only the status and the ETag/Last-Modified headers.
    "NotModified": (304, "Not Modified"),
    "NotImplemented": (501, "A header you provided implies functionality that is not implemented"),
    # Cartridge: "a/b" cannot be stored while "a" is an object (a file, not a directory).
    "ObjectParentIsFile": (409, "A prefix of the key is an existing object, not a directory."),
    "PreconditionFailed": (412, "At least one of the pre-conditions you specified did not hold"),
    "RequestHeaderSectionTooLarge": (400, "Your request header section exceeds the maximum allowed size."),
    "RequestTimeout": (
        400,
        "Your socket connection to the server was not read from or written to within the "
        "timeout period. Idle connections will be closed.",
    ),
    "RequestTimeTooSkewed": (
        403,
        "The difference between the request time and the current time is too large.",
    ),
    "ServiceUnavailable": (503, "Please reduce your request rate."),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    ),
    "SlowDown": (503, "Please reduce your request rate."),
    "XAmzContentSHA256Mismatch": (
        400,
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    ),
}


_XML_SPECIAL = re.compile(r"[&<>\x00-\x08\x0b-\x1f]")
_XML_NAMED = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _escape(text: str) -> str:
    """Escape element text; control characters become character references, as AWS emits them."""
    # "\r" must be a reference too: parsers turn a literal one into "\n", changing the key.
    return _XML_SPECIAL.sub(lambda m: _XML_NAMED.get(m[0]) or f"&#{ord(m[0])};", text)


class S3Error(Exception):
    """An S3 error response: `code`, HTTP `status`, `message`, and extra XML fields."""

    def __init__(
        self, code: str, message: str | None = None, *, resource: str | None = None, **extra: str
    ) -> None:
        status, default = CATALOGUE[code]
        super().__init__(f"{code}: {message or default}")
        self.code = code
        self.status = status
        self.message = message or default
        self.resource = resource
        self.extra = {name: str(value) for name, value in extra.items()}


def expired_request(expires: str, server_time: str) -> S3Error:
    """A presigned URL used after its expiry: AWS answers 403 AccessDenied, not ExpiredToken."""
    return S3Error(
        "AccessDenied", "Request has expired", X_Amz_Expires=expires, Expires=expires,
        ServerTime=server_time,
    )


def error_xml(err: S3Error, request_id: str, resource: str | None = None) -> bytes:
    """The standard S3 `<Error>` body for `err`."""
    fields = [("Code", err.code), ("Message", err.message)]
    fields += [(name.replace("_", "-"), value) for name, value in err.extra.items()]
    fields += [("Resource", err.resource or resource or ""), ("RequestId", request_id)]
    body = "".join(f"<{name}>{_escape(value)}</{name}>" for name, value in fields)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{body}</Error>'.encode()


def from_cartridge_error(
    exc: fs.CartridgeError, *, bucket: str | None = None, key: str | None = None
) -> S3Error:
    """Map an engine error to its S3 error; `key=None` means the request was about the bucket."""
    context = {"BucketName": bucket} if bucket is not None else {}
    if key is not None:
        context["Key"] = key
    match exc:
        case fs.NotFound():
            return S3Error("NoSuchBucket" if key is None else "NoSuchKey", **context)
        case fs.Exists() if key is None:
            # One tenant owns every bucket, so an existing bucket is always "yours".
            return S3Error("BucketAlreadyOwnedByYou", **context)
        case fs.Exists():
            # The engine refuses to replace an object only on an exclusive create
            # (If-None-Match: *), which S3 answers with 412.
            return S3Error("PreconditionFailed", Condition="If-None-Match", **context)
        case fs.NotEmpty():
            return S3Error("BucketNotEmpty" if key is None else "DirectoryNotEmpty", **context)
        case fs.IsADirectory():
            return S3Error("ExistingObjectIsDirectory", **context)
        case fs.NotADirectory():
            return S3Error("ObjectParentIsFile", **context)
        case fs.NameTooLong():
            return S3Error("KeyTooLongError", **context)
        case fs.InvalidArgument():
            return S3Error("InvalidArgument", str(exc) or None, **context)
        case fs.TooLarge():
            return S3Error("EntityTooLarge", **context)
        case fs.NoSpace():
            return S3Error("InsufficientStorage", **context)
        case fs.ReadOnly():
            # Permanent until an operator intervenes: 403 makes clients fail fast, where a 503
            # would make them retry (with back-off) a request that cannot succeed.
            return S3Error("AccessDenied", "The storage is read-only.", **context)
        case fs.PermissionDenied() | fs.NotPermitted():
            return S3Error("AccessDenied", **context)
        case fs.Busy():
            # Transient contention: a 503 is what SDKs retry automatically.
            return S3Error("ServiceUnavailable", "The resource is busy; retry the request.")
        case fs.IntegrityError():
            return S3Error("InternalError", "Stored data failed its integrity check.")
        case _:
            return S3Error("InternalError")
