"""Guest path helpers for the antivirus scan: the shared escaping and tar exclude patterns."""

from __future__ import annotations

from vmscan.pathenc import decode_path, encode_path
from vmscan.stream import exclude_pattern as tar_exclude_pattern

__all__ = ["decode_path", "encode_path", "tar_exclude_pattern"]
