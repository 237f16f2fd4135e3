"""deepbc.data.download and deepbc.data.archives against an HTTP server on loopback: fetch, checksums, resume, safe extraction."""

import fcntl
import hashlib
import io
import logging
import re
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from deepbc.data import archives, download
from deepbc.data.archives import ExtractLimits, safe_extract
from deepbc.data.download import fetch, sha256_file
from deepbc.jobs.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 5.0
_ENTRY = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["definitions"]["dataset"]["properties"]
# The dataset entry's defaults, from the schema (their one source).
LIMITS = ExtractLimits.from_config(_ENTRY["max_extracted_gb"]["default"], _ENTRY["max_compression_ratio"]["default"],
                                   "datasets.test")


def ensure_root(*args, limits=LIMITS):
    return download.ensure_root(*args, limits)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: the connection closes after each answer, which lets a cut-off body end early.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        state = self.server.state
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        if self.path not in state.files:
            self.send_error(404)
            return
        data, ctype = state.files[self.path]
        start = 0
        if rng and state.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", ctype)
        if self.path not in state.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in state.cut:
            state.cut.discard(self.path)
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _State:
    def __init__(self, base):
        self.base = base
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut: set[str] = set()  # paths whose next answer stops halfway
        self.no_length: set[str] = set()  # paths answered without Content-Length
        self.ranges = True

    def serve(self, path: str, data: bytes, ctype: str = "application/octet-stream") -> str:
        self.files[path] = (data, ctype)
        return self.base + path

    def count(self, path: str) -> int:
        return sum(p == path for p, _ in self.requests)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State(f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()
    thread.join(TIMEOUT)


def _tar(members: list, mode: str = "w:gz") -> bytes:
    """members: (name, bytes) for files, or TarInfo for anything else."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _zip(members: list) -> bytes:
    """members: (name, bytes) or (ZipInfo, bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _info(name, type_, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = type_, linkname
    return ti


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


GOOD = [("BreaKHis_v1/histology_slides/breast/benign/a.png", b"\x89PNG fake a" * 1000),
        ("BreaKHis_v1/histology_slides/breast/malignant/b.png", b"\x89PNG fake b" * 1000),
        ("BreaKHis_v1/README.txt", b"readme")]


def test_good_archive_downloaded_verified_extracted(server, tmp_path, caplog):
    data = _tar(GOOD)
    url = server.serve("/files/BreaKHis_v1.tar.gz", data)
    root, dl = tmp_path / "data" / "BreaKHis_v1", tmp_path / "dl"
    with caplog.at_level(logging.INFO):
        ensure_root(root, url, _sha(data).upper(), True, dl)
    assert (root / "histology_slides/breast/malignant/b.png").read_bytes() == GOOD[1][1]
    assert _files(tmp_path / "data") == sorted(
        ["BreaKHis_v1", "BreaKHis_v1/README.txt", "BreaKHis_v1/histology_slides",
         "BreaKHis_v1/histology_slides/breast", "BreaKHis_v1/histology_slides/breast/benign",
         "BreaKHis_v1/histology_slides/breast/benign/a.png",
         "BreaKHis_v1/histology_slides/breast/malignant",
         "BreaKHis_v1/histology_slides/breast/malignant/b.png"])
    # The archive is kept (verified), with no .part left beside it.
    assert _files(dl) == ["BreaKHis_v1.tar.gz"]
    assert sha256_file(dl / "BreaKHis_v1.tar.gz") == _sha(data)
    progress = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("downloading BreaKHis_v1.tar.gz:")]
    assert progress and re.search(r"/0\.0 MB \(100%\), [\d.]+ MB/s", progress[-1])
    # Root present and non-empty: a second call neither downloads nor extracts.
    ensure_root(root, url, _sha(data), True, dl)
    assert server.count("/files/BreaKHis_v1.tar.gz") == 1


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    data = _tar(GOOD)
    url = server.serve("/BreaKHis_v1.tar.gz", data)
    wrong = "0" * 64
    root, dl = tmp_path / "data" / "BreaKHis_v1", tmp_path / "dl"
    with pytest.raises(UserError) as exc:
        ensure_root(root, url, wrong, True, dl)
    msg = str(exc.value)
    assert wrong in msg and _sha(data) in msg and url in msg and str(dl / "BreaKHis_v1.tar.gz") in msg
    assert "HTML" not in msg
    assert _files(dl) == []  # neither the file nor a .part
    assert not (tmp_path / "data").exists()


def test_checksum_mismatch_of_an_html_page_says_so(server, tmp_path):
    url = server.serve("/login.tar.gz", b"<html>please log in</html>", "text/html; charset=utf-8")
    with pytest.raises(UserError, match="HTML page"):
        fetch(url, tmp_path / "x.tar.gz", "1" * 64, timeout=TIMEOUT)
    assert _files(tmp_path) == []


_OUTSIDE = "/tmp/deepbc-test-absolute-evil"

ESCAPES = {
    "dotdot": (_tar([GOOD[0], ("BreaKHis_v1/../../evil", b"x")]), "BreaKHis_v1/../../evil"),
    "absolute": (_tar([GOOD[0], (_OUTSIDE, b"x")]), _OUTSIDE),
    "symlink_outside": (_tar([GOOD[0], _info("BreaKHis_v1/link", tarfile.SYMTYPE, "../../"),
                              ("BreaKHis_v1/link/evil", b"x")]), "BreaKHis_v1/link"),
    "symlink_absolute": (_tar([GOOD[0], _info("BreaKHis_v1/passwd", tarfile.SYMTYPE, "/etc/passwd")]),
                         "BreaKHis_v1/passwd"),
    "hardlink": (_tar([GOOD[0], _info("BreaKHis_v1/hard", tarfile.LNKTYPE, "/etc/passwd")]),
                 "BreaKHis_v1/hard"),
    "device": (_tar([GOOD[0], _info("BreaKHis_v1/null", tarfile.CHRTYPE)]), "BreaKHis_v1/null"),
    "backslash": (_tar([GOOD[0], ("BreaKHis_v1\\..\\..\\evil", b"x")]), "BreaKHis_v1\\..\\..\\evil"),
    "zip_dotdot": (_zip([GOOD[0], ("../evil", b"x")]), "../evil"),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_members_are_refused_before_writing(server, tmp_path, case):
    data, offender = ESCAPES[case]
    name = "BreaKHis_v1.zip" if case.startswith("zip") else "BreaKHis_v1.tar.gz"
    url = server.serve(f"/{case}/{name}", data)
    root, dl = tmp_path / "data" / "BreaKHis_v1", tmp_path / "dl"
    with pytest.raises(UserError) as exc:
        ensure_root(root, url, _sha(data), True, dl)
    msg = str(exc.value)
    assert repr(offender) in msg and "nothing was extracted" in msg
    # Nothing inside the target (not even the good member), nothing outside it.
    assert not (tmp_path / "data").exists()
    assert _files(tmp_path) == ["dl", f"dl/{name}"]
    assert not Path(_OUTSIDE).exists()


def test_zip_symlink_refused_and_good_zip_extracted(tmp_path):
    link = zipfile.ZipInfo("pkg/link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bad = tmp_path / "bad.zip"
    bad.write_bytes(_zip([("pkg/a.txt", b"a"), (link, "/etc/passwd")]))
    with pytest.raises(UserError, match="'pkg/link': symbolic link"):
        safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    good = tmp_path / "good.zip"
    good.write_bytes(_zip([("pkg/", b""), ("pkg/a.txt", b"a"), ("top.txt", b"t")]))
    assert safe_extract(good, tmp_path / "out") == ["pkg", "pkg/a.txt", "top.txt"]
    assert (tmp_path / "out/pkg/a.txt").read_bytes() == b"a"
    assert _files(tmp_path / "out") == ["pkg", "pkg/a.txt", "top.txt"]


def test_checkpoint_archive_with_dot_prefix_into_existing_folder(server, tmp_path):
    data = _tar([("./resnet_v1_50.ckpt", b"weights")])
    url = server.serve("/models/resnet_v1_50_2016_08_28.tar.gz", data)
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "other").mkdir(parents=True)
    archive = fetch(url, ckpt_dir / download.archive_name(url), _sha(data), progress=False,
                    timeout=TIMEOUT)
    assert safe_extract(archive, ckpt_dir) == ["resnet_v1_50.ckpt"]
    assert (ckpt_dir / "resnet_v1_50.ckpt").read_bytes() == b"weights"
    # A second extraction would overwrite an existing entry: refused.
    with pytest.raises(UserError, match="already exist there: resnet_v1_50.ckpt"):
        safe_extract(archive, ckpt_dir)


def test_empty_root_folder_is_replaced(server, tmp_path):
    data = _tar(GOOD)
    url = server.serve("/BreaKHis_v1.tar.gz", data)
    root = tmp_path / "data" / "BreaKHis_v1"
    root.mkdir(parents=True)
    ensure_root(root, url, _sha(data), True, tmp_path / "dl")
    assert (root / "README.txt").read_bytes() == b"readme"


@pytest.mark.parametrize("root, expected", [
    ("data/BreaKHis_v1/histology_slides/breast", "data/BreaKHis_v1/README.txt"),
    ("data/breakhis", "data/breakhis/BreaKHis_v1/README.txt"),  # the folder holding BreaKHis_v1/
])
def test_root_below_or_above_the_archive_folder(server, tmp_path, root, expected):
    data = _tar(GOOD)
    url = server.serve("/BreaKHis_v1.tar.gz", data)
    ensure_root(tmp_path / root, url, _sha(data), True, tmp_path / "dl")
    assert (tmp_path / expected).read_bytes() == b"readme"
    assert (tmp_path / root).is_dir()


def test_archive_of_class_folders_extracts_into_root(server, tmp_path):
    data = _zip([("breast/p1_a.png", b"a"), ("lung/p2_b.png", b"b")])
    url = server.serve("/tma.zip", data)
    root = tmp_path / "data" / "tma"
    ensure_root(root, url, _sha(data), True, tmp_path / "dl")
    assert _files(root) == ["breast", "breast/p1_a.png", "lung", "lung/p2_b.png"]


def test_archive_without_the_path_to_root_is_not_extracted(server, tmp_path):
    data = _tar([("BreaKHis_v1/README.txt", b"r"), ("notes.txt", b"n")])
    url = server.serve("/BreaKHis_v1.tar.gz", data)
    root = tmp_path / "data" / "BreaKHis_v1" / "histology_slides" / "breast"
    with pytest.raises(UserError, match="does not contain BreaKHis_v1/histology_slides/breast/.*"
                                        "top-level entries are: BreaKHis_v1, notes.txt"):
        ensure_root(root, url, _sha(data), True, tmp_path / "dl")
    assert not (tmp_path / "data").exists()


def test_empty_archive_is_an_error(server, tmp_path):
    data = _tar([])
    url = server.serve("/BreaKHis_v1.tar.gz", data)
    with pytest.raises(UserError, match="is empty"):
        ensure_root(tmp_path / "data" / "BreaKHis_v1", url, _sha(data), True, tmp_path / "dl")
    assert not (tmp_path / "data").exists()


def test_interrupted_extraction_leaves_nothing_complete(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar(GOOD, mode="w"))

    class Interrupted(archives.Progress):
        def update(self, n=1, **extra):
            if self.done >= 1:
                raise KeyboardInterrupt
            super().update(n, **extra)

    monkeypatch.setattr(archives, "Progress", Interrupted)
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        safe_extract(archive, target)
    assert _files(target) == []  # no entry, and the temporary folder was removed


def test_damaged_archive_and_non_archive(tmp_path):
    data = _tar(GOOD)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="could not extract"):
        safe_extract(cut, tmp_path / "out")
    page = tmp_path / "page.tar.gz"
    page.write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="neither a tar nor a zip"):
        safe_extract(page, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_download_is_not_fetched_again(server, tmp_path):
    data = b"payload" * 5000
    url = server.serve("/file.bin", data)
    dest = tmp_path / "file.bin"
    assert fetch(url, dest, _sha(data), timeout=TIMEOUT) == dest
    assert fetch(url, dest, _sha(data), timeout=TIMEOUT) == dest
    assert server.count("/file.bin") == 1
    # Placed by hand with the right checksum: no request at all.
    other = tmp_path / "manual.bin"
    other.write_bytes(data)
    fetch(server.base + "/manual.bin", other, _sha(data), timeout=TIMEOUT)
    assert server.count("/manual.bin") == 0


def test_existing_file_with_wrong_checksum_is_replaced(server, tmp_path):
    data = b"right bytes"
    url = server.serve("/file.bin", data)
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"wrong bytes")
    fetch(url, dest, _sha(data), progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == data and server.count("/file.bin") == 1


@pytest.mark.parametrize("ranges", [True, False])
def test_interrupted_download_resumes(server, tmp_path, ranges):
    data = bytes(range(256)) * 4000
    url = server.serve("/big.bin", data)
    server.cut.add("/big.bin")
    server.ranges = ranges
    dest = tmp_path / "big.bin"
    with pytest.raises(UserError, match="(?s)stopped after 0.5 MB of 1.0 MB.*run again to resume"):
        fetch(url, dest, _sha(data), timeout=TIMEOUT)
    assert not dest.exists()
    part = tmp_path / "big.bin.part"
    assert part.read_bytes() == data[: len(data) // 2]
    fetch(url, dest, _sha(data), timeout=TIMEOUT)
    assert dest.read_bytes() == data and not part.exists()
    assert server.requests[-1] == ("/big.bin", f"bytes={len(data) // 2}-")


def test_stale_partial_longer_than_the_file_restarts(server, tmp_path):
    data = b"fresh" * 1000
    url = server.serve("/f.bin", data)
    (tmp_path / "f.bin.part").write_bytes(data + b"stale tail")
    fetch(url, tmp_path / "f.bin", _sha(data), timeout=TIMEOUT)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert [r for p, r in server.requests] == [f"bytes={len(data) + 10}-", None]  # 416, then all


def test_concurrent_download_into_the_same_file_is_refused(server, tmp_path):
    url = server.serve("/f.bin", b"data")
    with open(tmp_path / "f.bin.part", "wb") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another process is already downloading"):
            fetch(url, tmp_path / "f.bin", None, timeout=TIMEOUT)
    assert server.requests == []


def test_download_without_content_length(server, tmp_path, caplog):
    data = b"unknown size" * 10000
    url = server.serve("/f.bin", data)
    server.no_length.add("/f.bin")
    with caplog.at_level(logging.INFO):
        fetch(url, tmp_path / "f.bin", _sha(data), timeout=TIMEOUT)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert any(re.fullmatch(r"downloaded f\.bin: 0\.1 MB in [\d.]+ s \([\d.]+ MB/s\)", r.getMessage())
               for r in caplog.records)
    assert download._MBProgress(None, "x").line().startswith("x: 0.0 MB, ")


def test_http_404_is_a_clear_error(server, tmp_path):
    url = server.base + "/nothing/here.tar.gz"
    dest = tmp_path / "dl" / "here.tar.gz"
    with pytest.raises(UserError) as exc:
        fetch(url, dest, None, timeout=TIMEOUT)
    msg = str(exc.value)
    assert "HTTP 404" in msg and url in msg and f"put it at {dest}" in msg
    assert _files(tmp_path / "dl") == []


def test_connection_refused_is_a_clear_error(tmp_path):
    # Bound but not listening: connections are refused, and no other test or worker can take the port
    # meanwhile (a port merely freed could become another worker's loopback server).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/BreaKHis_v1.tar.gz"
        with pytest.raises(UserError, match=r"(?s)could not download .*could not connect.*put it at"):
            ensure_root(tmp_path / "data" / "BreaKHis_v1", url, "", True, tmp_path / "dl")
    assert _files(tmp_path / "dl") == []


def test_no_download_without_permission_or_url(server, tmp_path):
    data = _tar(GOOD)
    url = server.serve("/BreaKHis_v1.tar.gz", data)
    root = tmp_path / "data" / "BreaKHis_v1"
    ensure_root(root, url, _sha(data), False, tmp_path / "dl")
    ensure_root(root, "", "", True, tmp_path / "dl")
    assert server.requests == [] and not root.exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="not a sha256"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", "abc")
    with pytest.raises(UserError, match="only http"):
        fetch("ftp://example.org/x.tar.gz", tmp_path / "x", None)
    with pytest.raises(UserError, match="file name from the URL"):
        download.archive_name("https://example.org/downloads/")
    assert download.archive_name("https://h/a/BreaKHis%5Fv1.tar.gz?dl=1") == "BreaKHis_v1.tar.gz"
    data = b"z" * (3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == _sha(data)


def _deflated_zip(members: list) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_small_zip_unpacking_to_a_huge_member_is_refused_before_writing(server, tmp_path):
    """A decompression bomb: 16 MiB of zeros in a 16 kB zip (the issue's was 3 GiB in 14 MB)."""
    huge = 16 << 20
    data = _deflated_zip([("tma/breast/a.png", b"\x89PNG small"), ("tma/breast/bomb.png", bytes(huge))])
    assert len(data) < huge / 500
    url = server.serve("/tma.zip", data)
    root = tmp_path / "data" / "tma"
    with pytest.raises(UserError) as err:
        ensure_root(root, url, _sha(data), True, tmp_path / "dl")
    text = str(err.value)
    assert "member 'tma/breast/bomb.png' unpacks to 16,777,216 bytes from" in text
    assert "more than the 100 allowed by datasets.test.max_compression_ratio" in text
    assert not (tmp_path / "data").exists()  # nothing extracted, not even the small member


def test_archive_total_size_limit_from_headers_and_while_extracting(tmp_path, monkeypatch):
    members = [("pkg/a.bin", bytes(range(256)) * 4096), ("pkg/b.bin", bytes(range(255, -1, -1)) * 4096)]
    limits = ExtractLimits.from_config(0.0015, 100, "datasets.tma")  # 1.5 MB; the members are 2 x 1 MiB
    for kind, data in (("tar.gz", _tar(members)), ("zip", _deflated_zip(members))):
        archive, out = tmp_path / f"a.{kind}", tmp_path / kind
        archive.write_bytes(data)
        with pytest.raises(UserError, match=r"its members add up to 0\.0021 GB \(the largest, 'pkg/a.bin', "
                                            r"0\.00105 GB\), more than the 0\.0015 GB allowed by "
                                            r"datasets\.tma\.max_extracted_gb"):
            safe_extract(archive, out, limits)
        assert not out.exists()
        # Headers can lie: with the header check passed, writing stops at the limit all the same.
        monkeypatch.setattr(archives, "_refuse_oversized", lambda *args: None)
        with pytest.raises(UserError, match=r"extracting member 'pkg/b.bin' brings the total past the 0\.0015 GB "
                                            r"allowed by datasets\.tma\.max_extracted_gb"):
            safe_extract(archive, out, limits)
        assert _files(out) == []
        monkeypatch.undo()


def test_a_zip_member_larger_than_its_header_says_is_refused(tmp_path):
    data = bytearray(_deflated_zip([("pkg/a.bin", bytes(1 << 20))]))
    # Declare 1,000 bytes (uncompressed size) in the local and the central header.
    true_size = (1 << 20).to_bytes(4, "little")
    assert data.count(true_size) == 2
    data = bytes(data).replace(true_size, (1000).to_bytes(4, "little"))
    archive = tmp_path / "lie.zip"
    archive.write_bytes(data)
    with pytest.raises(UserError, match="could not extract .*Bad CRC-32 for file 'pkg/a.bin'"):
        safe_extract(archive, tmp_path / "out", LIMITS)
    assert _files(tmp_path / "out") == []
