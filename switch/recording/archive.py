"""Recordings to S3-compatible storage, nothing lost while the store is down.

Every finished recording gets a manifest beside it (``<name>.wav.json``: the call, its
SHA-256, the object key); the pair on disk *is* the queue, so a node restarted with
uploads pending takes them up again from the folder. The archive uploads one at a
time with the SHA-256 for the store to check (``x-amz-checksum-sha256``: a corrupted
upload is refused by the store), then asks the store for the object's checksum and
size, and only when both match publishes ``call.archived`` (its id derived from the
call and the checksum, so archiving the same file twice says the same thing) and then
deletes the local file and its manifest. The node runs it continuously (``start``);
the ``archive`` batch job makes one pass over a folder (``sweep``). A failure (the
store down, refused credentials, a mismatch) is retried with a growing pause (1 s,
doubling, at most ``RETRY_MAX_S``); ``status`` shows what waits and the last error in
``/health``.

The S3 client (boto3) is blocking: each request runs in a thread, off the loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from switch.backbone import events

log = logging.getLogger("voxswitch.recording")

MANIFEST_SUFFIX = ".json"
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0
CHUNK_BYTES = 64 * 1024


class ArchiveConfigError(ValueError):
    """``s3_url`` is not ``http(s)://KEY:SECRET@host[:port]/bucket[/prefix]``."""


@dataclass(frozen=True)
class S3Target:
    endpoint: str  # http(s)://host:port
    bucket: str
    prefix: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @classmethod
    def from_url(cls, url: str, region: str = "us-east-1") -> S3Target:
        parts = urllib.parse.urlsplit(url)
        path = parts.path.strip("/")
        if parts.scheme not in ("http", "https") or not parts.hostname or not path:
            raise ArchiveConfigError("s3_url: expected http(s)://KEY:SECRET@host[:port]/bucket")
        if not parts.username or not parts.password:
            raise ArchiveConfigError("s3_url: the access key and secret go before the host")
        bucket, _, prefix = path.partition("/")
        port = f":{parts.port}" if parts.port else ""
        return cls(
            endpoint=f"{parts.scheme}://{parts.hostname}{port}",
            bucket=bucket,
            prefix=prefix.strip("/"),
            access_key=urllib.parse.unquote(parts.username),
            secret_key=urllib.parse.unquote(parts.password),
            region=region,
        )

    def key_for(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},  # we retry, with our own pauses
                connect_timeout=3,
                read_timeout=30,
            ),
        )


def write_manifest(recording: Path, call_id: str, summary: dict[str, Any]) -> None:
    """Queue a finished recording for the archive (atomically: a half-written manifest
    is never read)."""
    manifest = recording.with_name(recording.name + MANIFEST_SUFFIX)
    partial = manifest.with_name(manifest.name + ".tmp")
    partial.write_text(json.dumps({"call_id": call_id, **summary}))
    partial.replace(manifest)


class RecordingArchive:
    """Uploads the recordings under ``root`` that have a manifest, oldest first."""

    def __init__(
        self,
        target: S3Target,
        root: Path,
        publish: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        node_id: str = "",
        on_archived: Callable[[str, str], None] | None = None,
    ) -> None:
        self.target = target
        self.root = root
        self.publish = publish
        self.node_id = node_id
        self.on_archived = on_archived  # (call id, s3:// location): the node's views follow
        self.uploaded = 0
        self.failures = 0
        self.last_error = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._pause = RETRY_MIN_S

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="archive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, call_id: str, summary: dict[str, Any]) -> None:
        """Queue a call's finished recording (its summary names the file) and look now.
        Raises OSError when the manifest cannot be written."""
        write_manifest(Path(summary["location"]), call_id, summary)
        self._wake.set()

    def pending(self) -> list[Path]:
        manifests = self.root.rglob("*.wav" + MANIFEST_SUFFIX) if self.root.exists() else []
        return sorted(manifests, key=lambda p: p.stat().st_mtime)

    def status(self) -> dict[str, Any]:
        return {
            "target": self.target.url_of(self.target.key_for("")),
            "pending": len(self.pending()),
            "uploaded": self.uploaded,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            queue = self.pending()
            for manifest in queue:
                if not await self._archive(manifest):
                    break  # the store is unwell: pause, then start over
            else:
                await self._wake.wait()
                continue
            await asyncio.sleep(self._pause)
            self._pause = min(RETRY_MAX_S, self._pause * 2)

    async def sweep(self) -> dict[str, int]:
        """One pass over what waits (the batch job): every recording tried once."""
        done = failed = 0
        for manifest in self.pending():
            if await self._archive(manifest):
                done += 1
            else:
                failed += 1
        return {"archived": done, "failed": failed, "pending": len(self.pending())}

    async def _archive(self, manifest: Path) -> bool:
        try:
            entry = json.loads(manifest.read_text())
            recording = manifest.with_name(manifest.name.removesuffix(MANIFEST_SUFFIX))
            key = self.target.key_for(str(recording.relative_to(self.root)))
            await asyncio.to_thread(self._upload, recording, key, entry["sha256"])
            location = self.target.url_of(key)
            if self.publish is not None:
                # Said before the file goes: a crash in between archives it again and
                # says the same event again (same id), never nothing.
                published = self.publish(events.event(
                    "call.archived", entry["call_id"], self.node_id, time.time(),
                    event_id=events.stable_id(entry["call_id"], "archived", entry["sha256"]),
                    location=location, sha256=entry["sha256"], bytes=entry["bytes"],
                ))  # fmt: skip
                if inspect.isawaitable(published):
                    await published
        except (OSError, ValueError, KeyError, BotoCoreError, ClientError, ArchiveError) as exc:
            self.failures += 1
            self.last_error = f"{manifest.name}: {exc}"
            log.warning("recording not archived yet (retried): %s", self.last_error)
            return False
        self._pause = RETRY_MIN_S
        self.uploaded += 1
        self.last_error = ""
        recording.unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
        log.info("call %s: recording archived to %s", entry["call_id"], location)
        if self.on_archived is not None:
            self.on_archived(entry["call_id"], location)
        return True

    def open(self, location: str) -> Iterator[bytes]:
        """The bytes of an archived recording (``s3://bucket/key``), in chunks (blocking:
        iterate it in a thread)."""
        client, key = self._client_for(location)
        body = client.get_object(Bucket=self.target.bucket, Key=key)["Body"]
        return iter(body.iter_chunks(CHUNK_BYTES))

    def _client_for(self, location: str) -> tuple[Any, str]:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        if bucket != self.target.bucket:
            raise ArchiveError(f"{location} is not in this archive ({self.target.bucket})")
        if self._client is None:
            self._client = self.target.client()
        return self._client, key

    def download(self, location: str, path: Path) -> None:
        """Copy an archived recording to ``path`` (blocking)."""
        client, key = self._client_for(location)
        client.download_file(self.target.bucket, key, str(path))

    def delete(self, location: str) -> None:
        """Remove an archived recording from the store (blocking; gone already is fine)."""
        client, key = self._client_for(location)
        client.delete_object(Bucket=self.target.bucket, Key=key)

    def _upload(self, recording: Path, key: str, sha256_hex: str) -> None:
        """Put, then confirm with the store's own checksum and size (blocking)."""
        if self._client is None:
            self._client = self.target.client()
        client = self._client
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        size = recording.stat().st_size
        with recording.open("rb") as body:
            client.put_object(
                Bucket=self.target.bucket, Key=key, Body=body, ChecksumSHA256=checksum,
                ContentType="audio/wav",
            )  # fmt: skip
        # The store checked the checksum we sent before it kept the object; ask for what
        # it kept (a store that does not say its checksum is judged by the size).
        head = client.head_object(Bucket=self.target.bucket, Key=key, ChecksumMode="ENABLED")
        if head.get("ContentLength") != size or head.get("ChecksumSHA256", checksum) != checksum:
            raise ArchiveError(
                f"the store holds {head.get('ContentLength')} bytes, checksum "
                f"{head.get('ChecksumSHA256')}; we sent {size}, {checksum}"
            )


class ArchiveError(Exception):
    """The store's copy does not match what we sent."""
