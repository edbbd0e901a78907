"""Checksums of shard files, computed on the bytes as they are written or read (never a second pass)."""

from __future__ import annotations

import hashlib
from typing import BinaryIO


class HashedFile:
    """A binary file that hashes (SHA-256) every byte written to or read from it, in order.

    The writer hands it to webdataset's ``ShardWriter`` as the shard's file, so the manifest's checksum costs no
    second read; the reader passes it to the tar parser, then ``drain()``\\s the tail the parser left unread (tar's
    end-of-archive padding), so the digest covers the whole file.
    """

    def __init__(self, raw: BinaryIO):
        """Args:
            raw: An open binary file (or any stream with ``read``/``write``/``close``).
        """
        self.raw = raw
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.raw.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read (and hash) what is left of the file."""
        while self.read(chunk):
            pass

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()

    def hexdigest(self) -> str:
        """The SHA-256 of every byte passed so far, as hex."""
        return self.hash.hexdigest()
