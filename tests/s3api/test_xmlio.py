"""XML: request bodies from the real client parse; rendered responses parse in the real client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.exceptions import ClientError

from s3api import xmlio
from s3api.errors import S3Error, error_xml
from s3api.xmlio import ListObjectsResult, ObjectInfo, Owner

WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
OWNER = Owner("owner-id", "owner")
# Keys that stress XML and URL encoding: clients must get them back unchanged.
KEYS = ["a b", "a+b", "a%2Fb", "ü/ключ", "x&y<z>", "tab\there", "cr\rlf\n", "ctl\x01\x1f", "~!*'();:@=$,?#[]"]


def _query(request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query, keep_blank_values=True)


def _respond_with(fake_s3, render):
    fake_s3.respond = lambda request: (200, {}, render(request))


# ------------------------------------------------------------------ request bodies


def test_complete_multipart_body_from_client(fake_s3):
    fake_s3.respond = lambda request: (200, {}, xmlio.render_complete_multipart(
        "http://h/b/k", "b", "k", "abc-2"))
    fake_s3.client.complete_multipart_upload(
        Bucket="b", Key="k", UploadId="u", MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": '"e1"', "ChecksumCRC32": "AAAAAA=="},
            {"PartNumber": 3, "ETag": "e3"}]})
    parts = xmlio.parse_complete_multipart_upload(fake_s3.last.body)
    assert parts == [xmlio.CompletedPart(1, "e1", {"CRC32": "AAAAAA=="}),
                     xmlio.CompletedPart(3, "e3", {})]


def test_delete_body_from_client(fake_s3):
    _respond_with(fake_s3, lambda request: xmlio.render_delete_result([]))
    keys = ["a", "b c", "x&y"]
    fake_s3.client.delete_objects(Bucket="b", Delete={
        "Objects": [{"Key": key} for key in keys] + [{"Key": "v", "VersionId": "null"}],
        "Quiet": True})
    request = xmlio.parse_delete(fake_s3.last.body)
    assert request.quiet
    assert request.objects == [xmlio.ObjectToDelete(key) for key in keys] + [
        xmlio.ObjectToDelete("v", "null")]


def test_create_bucket_body_from_client(fake_s3):
    fake_s3.client.create_bucket(Bucket="b", CreateBucketConfiguration={
        "LocationConstraint": "eu-west-1"})
    assert xmlio.parse_create_bucket(fake_s3.last.body) == "eu-west-1"
    assert xmlio.parse_create_bucket(b"") is None


def test_bodies_without_namespace():
    body = b"<Delete><Object><Key>k</Key></Object></Delete>"
    assert xmlio.parse_delete(body) == xmlio.DeleteRequest([xmlio.ObjectToDelete("k")], False)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Delete><Object><Key>&lol3;</Key></Object></Delete>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Delete><Object><Key>&xxe;</Key></Object></Delete>"""


@pytest.mark.parametrize("body", [
    BILLION_LAUGHS, EXTERNAL, b"<Delete><Object><Key>k</Key></Object>", b"not xml",
    b"<Other/>", b"<Delete></Delete>", b"<Delete><Object/></Delete>",
    b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
])
def test_bad_delete_bodies(body):
    with pytest.raises(S3Error) as excinfo:
        xmlio.parse_delete(body)
    assert excinfo.value.code == "MalformedXML"


def test_oversized_body():
    with pytest.raises(S3Error) as excinfo:
        xmlio.parse_delete(b" " * (xmlio.MAX_XML_BODY + 1))
    assert excinfo.value.code == "MaxMessageLengthExceeded"


@pytest.mark.parametrize(("parts", "code"), [
    ("<Part><PartNumber>2</PartNumber><ETag>a</ETag></Part>"
     "<Part><PartNumber>1</PartNumber><ETag>b</ETag></Part>", "InvalidPartOrder"),
    ("<Part><PartNumber>1</PartNumber><ETag>a</ETag></Part>"
     "<Part><PartNumber>1</PartNumber><ETag>b</ETag></Part>", "InvalidPartOrder"),
    ("<Part><PartNumber>10001</PartNumber><ETag>a</ETag></Part>", "InvalidArgument"),
    ("<Part><PartNumber>x</PartNumber><ETag>a</ETag></Part>", "MalformedXML"),
    ("<Part><PartNumber>1</PartNumber></Part>", "MalformedXML"),
    ("", "MalformedXML"),
])
def test_bad_complete_bodies(parts, code):
    with pytest.raises(S3Error) as excinfo:
        xmlio.parse_complete_multipart_upload(
            f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode())
    assert excinfo.value.code == code


# ------------------------------------------------------------------ responses, read by botocore


def test_iso8601():
    assert xmlio.iso8601(WHEN) == "2024-05-06T07:08:09.123Z"
    assert xmlio.iso8601(WHEN.astimezone(timezone(timedelta(hours=2)))) == "2024-05-06T07:08:09.123Z"
    assert xmlio.iso8601(datetime(2024, 1, 1)) == "2024-01-01T00:00:00.000Z"


def test_serialized_document_shape():
    document = xmlio.render_versioning()
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' in document


def test_list_buckets(fake_s3):
    buckets = [xmlio.BucketInfo("alpha", WHEN), xmlio.BucketInfo("beta", WHEN)]
    _respond_with(fake_s3, lambda request: xmlio.render_list_buckets(OWNER, buckets))
    result = fake_s3.client.list_buckets()
    assert [b["Name"] for b in result["Buckets"]] == ["alpha", "beta"]
    assert result["Buckets"][0]["CreationDate"] == WHEN.replace(microsecond=123000)
    assert result["Owner"] == {"ID": "owner-id", "DisplayName": "owner"}


def _objects(keys):
    return [ObjectInfo(key, WHEN, "0123abcd", 5, owner=OWNER, checksum_algorithm="CRC32")
            for key in keys]


def test_list_objects_v2_encoding_round_trip(fake_s3):
    def render(request):
        query = _query(request)
        assert query["encoding-type"] == ["url"]  # botocore always asks for it
        return xmlio.render_list_objects_v2(ListObjectsResult(
            bucket="b", prefix=query["prefix"][0], max_keys=1000, is_truncated=True,
            contents=_objects(KEYS), common_prefixes=["p re+fix/"], delimiter="/",
            encoding_type="url", continuation_token="tok+/=", next_continuation_token="n+x/=",
            start_after="a b+c"))
    _respond_with(fake_s3, render)
    result = fake_s3.client.list_objects_v2(Bucket="b", Prefix="é +", Delimiter="/",
                                            ContinuationToken="tok+/=", StartAfter="a b+c")
    assert [obj["Key"] for obj in result["Contents"]] == KEYS
    assert result["Prefix"] == "é +" and result["Delimiter"] == "/"
    assert result["StartAfter"] == "a b+c"
    assert result["CommonPrefixes"] == [{"Prefix": "p re+fix/"}]
    assert result["KeyCount"] == len(KEYS) + 1 and result["IsTruncated"]
    assert result["NextContinuationToken"] == "n+x/="
    first = result["Contents"][0]
    assert first["ETag"] == '"0123abcd"' and first["Size"] == 5
    assert first["StorageClass"] == "STANDARD" and first["ChecksumAlgorithm"] == ["CRC32"]
    assert first["LastModified"] == WHEN.replace(microsecond=123000)


def test_list_objects_v1(fake_s3):
    keys = ["a b", "c+d", "x&y"]
    _respond_with(fake_s3, lambda request: xmlio.render_list_objects_v1(ListObjectsResult(
        bucket="b", prefix="", max_keys=2, is_truncated=True, contents=_objects(keys),
        delimiter="/", encoding_type="url", marker="m k", next_marker="c+d")))
    result = fake_s3.client.list_objects(Bucket="b", Marker="m k", Delimiter="/")
    assert [obj["Key"] for obj in result["Contents"]] == keys
    assert result["Marker"] == "m k" and result["NextMarker"] == "c+d"
    assert result["Contents"][0]["Owner"]["ID"] == "owner-id"


def test_list_objects_without_encoding_escapes_xml(fake_s3):
    keys = ["x&y<z>", "tab\there", "quote\"'"]
    fake_s3.client.meta.events.unregister("before-parameter-build.s3.ListObjects",
                                          unique_id="set-list-objects-encoding-type-v1")
    rendered = xmlio.render_list_objects_v1(ListObjectsResult(
        bucket="b", prefix="", max_keys=10, is_truncated=False, contents=_objects(keys)))
    _respond_with(fake_s3, lambda request: rendered)
    assert [obj["Key"] for obj in fake_s3.client.list_objects(Bucket="b")["Contents"]] == keys


def test_control_characters_become_references():
    rendered = xmlio.render_list_objects_v1(ListObjectsResult(
        bucket="b", prefix="", max_keys=10, is_truncated=False, contents=_objects(["a\rb\x01"])))
    assert b"<Key>a&#13;b&#1;</Key>" in rendered


def test_list_versions(fake_s3):
    _respond_with(fake_s3, lambda request: xmlio.render_list_versions(xmlio.ListVersionsResult(
        bucket="b", prefix="", max_keys=1000, is_truncated=False, versions=_objects(KEYS),
        encoding_type="url", common_prefixes=["d ir/"], delimiter="/")))
    result = fake_s3.client.list_object_versions(Bucket="b", Delimiter="/")
    assert [v["Key"] for v in result["Versions"]] == KEYS
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in result["Versions"])
    assert result["CommonPrefixes"] == [{"Prefix": "d ir/"}]


def test_location_and_versioning(fake_s3):
    _respond_with(fake_s3, lambda request: xmlio.render_location("eu-west-1"))
    assert fake_s3.client.get_bucket_location(Bucket="b")["LocationConstraint"] == "eu-west-1"
    _respond_with(fake_s3, lambda request: xmlio.render_location("us-east-1"))
    assert fake_s3.client.get_bucket_location(Bucket="b")["LocationConstraint"] is None
    _respond_with(fake_s3, lambda request: xmlio.render_versioning())
    assert "Status" not in fake_s3.client.get_bucket_versioning(Bucket="b")
    _respond_with(fake_s3, lambda request: xmlio.render_versioning("Suspended"))
    assert fake_s3.client.get_bucket_versioning(Bucket="b")["Status"] == "Suspended"


def test_copy_results(fake_s3):
    _respond_with(fake_s3, lambda request: xmlio.render_copy_object(
        "e1", WHEN, {"CRC32": "AAAAAA=="}))
    result = fake_s3.client.copy_object(Bucket="b", Key="k", CopySource="b/src")
    assert result["CopyObjectResult"]["ETag"] == '"e1"'
    assert result["CopyObjectResult"]["ChecksumCRC32"] == "AAAAAA=="
    _respond_with(fake_s3, lambda request: xmlio.render_copy_part("e2", WHEN))
    result = fake_s3.client.upload_part_copy(Bucket="b", Key="k", CopySource="b/src",
                                             UploadId="u", PartNumber=1)
    assert result["CopyPartResult"]["ETag"] == '"e2"'
    assert result["CopyPartResult"]["LastModified"] == WHEN.replace(microsecond=123000)


def test_multipart_results(fake_s3):
    _respond_with(fake_s3, lambda request: xmlio.render_initiate_multipart("b", "k y", "up-1"))
    assert fake_s3.client.create_multipart_upload(Bucket="b", Key="k y")["UploadId"] == "up-1"

    _respond_with(fake_s3, lambda request: xmlio.render_complete_multipart(
        "http://h/b/k", "b", "k", "abc-2", {"CRC32": "AAAAAA==-2"}, "COMPOSITE"))
    result = fake_s3.client.complete_multipart_upload(
        Bucket="b", Key="k", UploadId="u", MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": "e"}]})
    assert (result["ETag"], result["ChecksumCRC32"], result["ChecksumType"]) == (
        '"abc-2"', "AAAAAA==-2", "COMPOSITE")

    parts = [xmlio.PartInfo(n, WHEN, f"e{n}", 5 << 20, {"CRC32": "AAAAAA=="}) for n in (1, 2)]
    _respond_with(fake_s3, lambda request: xmlio.render_list_parts(xmlio.ListPartsResult(
        bucket="b", key="k", upload_id="u", owner=OWNER, parts=parts, max_parts=2,
        is_truncated=True, next_part_number_marker=2, checksum_algorithm="CRC32",
        checksum_type="COMPOSITE")))
    result = fake_s3.client.list_parts(Bucket="b", Key="k", UploadId="u")
    assert [p["PartNumber"] for p in result["Parts"]] == [1, 2]
    assert result["Parts"][0]["ChecksumCRC32"] == "AAAAAA==" and result["Parts"][1]["Size"] == 5 << 20
    assert result["NextPartNumberMarker"] == 2 and result["IsTruncated"]
    assert result["Initiator"]["ID"] == "owner-id"

    # botocore asks no encoding-type here: XML 1.0 cannot carry \x01, so such keys are left out.
    keys = [key for key in KEYS if "\x01" not in key]
    uploads = [xmlio.UploadInfo(key, f"id-{i}", WHEN, OWNER) for i, key in enumerate(keys)]
    _respond_with(fake_s3, lambda request: xmlio.render_list_uploads(xmlio.ListUploadsResult(
        bucket="b", uploads=uploads, max_uploads=1000, is_truncated=False,
        encoding_type=_query(request).get("encoding-type", [None])[0])))
    result = fake_s3.client.list_multipart_uploads(Bucket="b")
    assert [u["Key"] for u in result["Uploads"]] == keys
    assert result["Uploads"][0]["Initiated"] == WHEN.replace(microsecond=123000)


def test_delete_result(fake_s3):
    _respond_with(fake_s3, lambda request: xmlio.render_delete_result(
        [xmlio.DeletedEntry("a b"), xmlio.DeletedEntry("v", "null")],
        [xmlio.DeleteErrorEntry("bad", "AccessDenied", "Access Denied")]))
    result = fake_s3.client.delete_objects(Bucket="b", Delete={"Objects": [{"Key": "x"}]})
    assert result["Deleted"] == [{"Key": "a b"}, {"Key": "v", "VersionId": "null"}]
    assert result["Errors"] == [{"Key": "bad", "Code": "AccessDenied", "Message": "Access Denied"}]


def test_error_body_parsed_by_client(fake_s3):
    error = S3Error("NoSuchKey", Key="a&b")
    fake_s3.respond = lambda request: (error.status, {}, error_xml(error, "req-1", "/b/a&b"))
    with pytest.raises(ClientError) as excinfo:
        fake_s3.client.get_object(Bucket="b", Key="a&b")
    parsed = excinfo.value.response
    assert parsed["Error"]["Code"] == "NoSuchKey"
    assert parsed["Error"]["Message"] == "The specified key does not exist."
    assert parsed["Error"]["Key"] == "a&b"
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 404

