"""File names that are not valid UTF-8.

On Linux a file name is bytes. Python decodes it as UTF-8 with ``surrogateescape``: each byte that
is not part of valid UTF-8 (e.g. ``0xE9``, a Latin-1 ``é`` from an old archive) becomes a lone
surrogate (``\\udce9``). Such a string still opens the file, but cannot be written as UTF-8 text:
not into a parquet manifest, a CSV, a TFRecord's ``image/filename`` or a log file. Wherever a name
is written it is ``printable``: each such byte as the four characters ``\\xNN``.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import PurePosixPath

# The surrogates that stand for one undecodable byte each (0x80-0xFF).
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def is_utf8(name: str) -> bool:
    """Whether ``name`` can be written as UTF-8 text as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with each undecodable byte shown as ``\\xNN`` (``zero_\\udce9.png`` -> ``zero_\\xe9.png``)."""
    return _ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def shell_quote(path: str) -> str:
    """``path`` quoted for bash: plain single quotes if it is UTF-8, else ``$'...'`` with every byte
    that is not printable ASCII as ``\\xNN``, which bash turns back into that very byte."""
    if is_utf8(path):
        return shlex.quote(path)
    out = []
    for byte in os.fsencode(path):
        char = chr(byte)
        out.append(char if 0x20 <= byte < 0x7F and char not in "'\\" else f"\\x{byte:02x}")
    return "$'" + "".join(out) + "'"


def rename_command(root: str | os.PathLike, rel: str) -> str:
    """A bash command renaming the first part of ``rel`` (a file or folder under ``root``) whose name
    is not UTF-8 to a UTF-8 name: its undecodable bytes read as Latin-1 (``\\xe9`` -> ``é``), the
    usual origin of such names (``_`` for the bytes that are no printable Latin-1 character), with
    ``_2``, ``_3``... before the extension if that name is taken."""
    parts = PurePosixPath(rel).parts
    bad = next(i for i, part in enumerate(parts) if not is_utf8(part))
    parent = os.path.join(os.fspath(root), *parts[:bad])
    latin1 = _ESCAPED_BYTE.sub(lambda m: _latin1(ord(m.group()) - 0xDC00), parts[bad])
    stem, ext = os.path.splitext(latin1)
    new, n = latin1, 1
    while os.path.lexists(os.path.join(parent, new)):
        n += 1
        new = f"{stem}_{n}{ext}"
    return f"mv -- {shell_quote(os.path.join(parent, parts[bad]))} {shell_quote(os.path.join(parent, new))}"


def _latin1(byte: int) -> str:
    char = chr(byte)
    return char if char.isprintable() else "_"
