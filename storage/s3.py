"""The S3 object store (AWS S3, MinIO, SeaweedFS...) through boto3.

boto3 is synchronous, so every call runs in a worker thread. Path-style
addressing because MinIO and SeaweedFS do not serve virtual-hosted buckets by
default. When ``access_key`` is None, boto3's own credential chain applies
(e.g. an instance role); the settings layer decides what to pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from storage.base import ObjectStore, StoreMisconfigured, StoreUnavailable
from storage.codec import validate_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

PRESIGN_SECONDS = 3600
# Error codes that mean "the service is struggling", not "the request is wrong".
_RETRYABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                    "RequestTimeTooSkewed", "Throttling", "ThrottlingException"}


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _not_found(exc: ClientError) -> bool:
    return _status(exc) == 404 or _code(exc) in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


# Answers that mean "this store is set up wrong" (credentials, permissions, the
# bucket), by code; waiting does not cure them (``StoreMisconfigured``).
_MISCONFIGURED = {
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "AccountProblem": "access denied",
    "InvalidAccessKeyId": "unknown access key",
    "SignatureDoesNotMatch": "wrong secret key",
    "AuthorizationHeaderMalformed": "wrong region or credentials",
    "InvalidToken": "invalid credentials",
    "ExpiredToken": "expired credentials",
    "NoSuchBucket": "no such bucket",
    "PermanentRedirect": "the bucket is in another region",
}


def _misconfigured(exc: ClientError) -> str | None:
    """What is set up wrong, if ``exc`` says so (a HEAD's 403 carries no code)."""
    return _MISCONFIGURED.get(_code(exc)) or ("access denied" if _status(exc) == 403 else None)


class S3ObjectStore(ObjectStore):
    """An ``ObjectStore`` in one S3 bucket."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        access_key: str | None,
        secret_key: str | None,
        public_url: str | None = None,
        presign_seconds: int = PRESIGN_SECONDS,
        logger: logging.Logger | None = None,
    ) -> None:
        """``public_url``: base URL browsers fetch objects from; else links are presigned.

        ``presign_seconds``: how long a presigned link stays valid.
        """
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        self._bucket = bucket
        self._region = region
        self._public_url = public_url.rstrip("/") if public_url else None
        self._presign_seconds = presign_seconds
        self._log = logger or logging.getLogger(__name__)
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=15,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        self._client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except ClientError as exc:
            if _status(exc) >= 500 or _code(exc) in _RETRYABLE_CODES:
                raise StoreUnavailable(f"S3 {what}: {exc}") from exc
            wrong = _misconfigured(exc)
            if wrong is not None:
                raise self._misconfiguration(what, wrong, exc) from exc
            raise
        except NoCredentialsError as exc:  # before any request: nothing to sign with
            raise self._misconfiguration(what, "no credentials", exc) from exc
        except (BotoConnectionError, BotoCoreError) as exc:
            # Connection refused/reset, timeouts, a truncated response body...
            raise StoreUnavailable(f"S3 {what}: {exc}") from exc

    def _misconfiguration(self, what: str, wrong: str, exc: Exception) -> StoreMisconfigured:
        return StoreMisconfigured(
            f"S3 {what}: misconfigured: {wrong} (bucket {self._bucket}): {exc}"
        )

    async def open(self) -> None:
        """Create the bucket if it does not exist; idempotent."""

        def ensure_bucket() -> None:
            try:
                self._client.head_bucket(Bucket=self._bucket)
                return
            except ClientError as exc:
                if not _not_found(exc):
                    raise
            kwargs: dict[str, Any] = {"Bucket": self._bucket}
            if self._region != "us-east-1":  # us-east-1 refuses an explicit constraint
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as exc:
                if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
            self._log.info("created S3 bucket %s", self._bucket)

        await self._run("open", ensure_bucket)

    async def close(self) -> None:
        """Close the client's connection pool."""
        await asyncio.to_thread(self._client.close)

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the bucket answers.

        ``StoreMisconfigured`` if it answers no: no credentials, access denied,
        no such bucket (a HEAD's 404 is the bucket's, made by ``open``).
        """
        try:
            await self._run("ping", lambda: self._client.head_bucket(Bucket=self._bucket))
        except ClientError as exc:
            if _not_found(exc):
                raise self._misconfiguration("ping", "no such bucket", exc) from exc
            raise

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (S3 acknowledges only durably stored objects)."""
        validate_key(key)
        body = bytes(data)
        try:
            await self._run(
                f"put {key}",
                lambda: self._client.put_object(
                    Bucket=self._bucket, Key=key, Body=body, ContentType=content_type
                ),
            )
        except ClientError as exc:
            # The key is already validated, so no answer means "this request is
            # wrong": denied, expired credentials, a bucket lost in a MinIO
            # restart are all operator-fixable outages. As StoreUnavailable they
            # send the image to the spool instead of losing the snapshot.
            raise StoreUnavailable(f"S3 put {key}: {exc}") from exc

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        """A conditional put (``If-None-Match: *``); on 412, compare the stored bytes.

        AWS S3, MinIO and SeaweedFS (4.x, tested) refuse the put with 412 when
        the key exists; a server that ignored the header would overwrite.
        """
        validate_key(key)
        body = bytes(data)
        try:
            await self._run(
                f"put {key}",
                lambda: self._client.put_object(
                    Bucket=self._bucket,
                    Key=key,
                    Body=body,
                    ContentType=content_type,
                    IfNoneMatch="*",
                ),
            )
        except ClientError as exc:
            if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                try:
                    return await self.get(key) == body
                except KeyError:  # deleted meanwhile: the key is free again
                    return await self.put_new(key, data, content_type)
            # As in put: an outage for the caller (retry or spool), not a lost snapshot.
            raise StoreUnavailable(f"S3 put {key}: {exc}") from exc
        return True

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``KeyError`` if absent."""
        validate_key(key)

        def read() -> bytes:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
            with response["Body"] as body:
                return body.read()

        try:
            return await self._run(f"get {key}", read)
        except ClientError as exc:
            if _not_found(exc):
                raise KeyError(key) from exc
            raise

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        validate_key(key)
        try:
            await self._run(
                f"head {key}", lambda: self._client.head_object(Bucket=self._bucket, Key=key)
            )
        except ClientError as exc:
            if _not_found(exc):
                return False
            raise
        return True

    async def delete(self, key: str) -> None:
        """``DeleteObject``: S3 answers 204 whether or not ``key`` existed."""
        validate_key(key)
        try:
            await self._run(
                f"delete {key}", lambda: self._client.delete_object(Bucket=self._bucket, Key=key)
            )
        except ClientError as exc:
            if _not_found(exc):  # a server that says so for an absent key
                return
            raise

    def url(self, key: str) -> str | None:
        """``public_url/key`` when configured, else a presigned GET valid ``presign_seconds``."""
        validate_key(key)
        if self._public_url:
            return f"{self._public_url}/{quote(key, safe='/')}"
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._bucket, "Key": key},
            ExpiresIn=self._presign_seconds,
        )
