"""
How a receiver turns an offered C{name} into a file name it may create (§8.7: "receivers
sanitise C{name}"). The result is one plain name, never a path: no path components, no
control or invisible formatting characters, no leading dot, at most L{MAX_NAME_BYTES} bytes
of UTF-8, never empty, never C{.} or C{..}. L{candidate_names} adds the suffix used when the
name is taken. Both are pure functions; the caller still opens files relative to its files
directory only (and with C{O_EXCL}), so a name can never reach outside it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

__all__ = ["FALLBACK_NAME", "MAX_NAME_BYTES", "candidate_names", "sanitize_name"]

#: Room for a collision suffix and a partial-file suffix within the usual 255-byte limit.
MAX_NAME_BYTES = 200
FALLBACK_NAME = "file"
#: Characters some file systems refuse or shells misread; replaced by "_".
_AWKWARD = frozenset('<>:"|?*')


def _allowed(char: str) -> bool:
    # Cc: C0, DEL, C1 controls (NUL included); Cf: bidi overrides, zero-width characters;
    # Cs/Co/Cn: surrogates, private use, unassigned.
    return unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn")


def _truncate(text: str, limit: int) -> str:
    """At most C{limit} bytes of UTF-8, cut at a character boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def sanitize_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """The plain file name to store an offered C{name} as (see the module docstring)."""
    name = unicodedata.normalize("NFC", name)
    # Path components: keep what follows the last separator of either convention.
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(("_" if c in _AWKWARD else c) for c in name if _allowed(c))
    # Blanks and dots at the ends: hidden files, ".", "..", names Windows trims.
    name = name.strip().lstrip(".").rstrip(". ").strip()
    if not name:
        return FALLBACK_NAME
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) > 16:
        stem, dot, ext = name, "", ""
    room = max_bytes - len((dot + ext).encode("utf-8"))
    stem = _truncate(stem, room).rstrip(". ").strip()
    return (stem or FALLBACK_NAME) + dot + ext


def candidate_names(name: str) -> Iterator[str]:
    """C{name}, then C{stem (1).ext}, C{stem (2).ext}, ... for a name already taken."""
    yield name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    n = 1
    while True:
        yield f"{stem} ({n}){dot}{ext}"
        n += 1
