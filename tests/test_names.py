"""File names that are not UTF-8: shown as \\xNN, quoted for bash byte for byte."""

import os
import subprocess

import pytest

from deepbc.jobs import names


def test_printable_shows_each_undecodable_byte_as_hex_and_leaves_the_rest():
    name = os.fsdecode(b"caf\xc3\xa9_\xe9\xff.png")  # a valid UTF-8 "é", then two bytes that are not UTF-8
    assert not names.is_utf8(name) and names.is_utf8("café.png")
    assert names.printable(name) == "café_\\xe9\\xff.png"
    assert names.printable("plain\\xe9.png") == "plain\\xe9.png"


@pytest.mark.parametrize("raw", [b"zero_\xe9.png", b"it's a \\ \"quoted\" $name\xff\n.png", "café.png".encode()])
def test_shell_quote_gives_bash_the_very_bytes(raw):
    quoted = names.shell_quote(os.fsdecode(raw))
    done = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True, timeout=30)
    assert done.stdout == raw
