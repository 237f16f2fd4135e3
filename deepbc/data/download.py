"""Downloads with progress, sha256 verification and resumption; dataset folders made from archives.

Used for the datasets (``ensure_root``, called by the dataset check rule) and for the TF-Slim
ImageNet checkpoint archives (``fetch``; extraction is ``deepbc.data.archives``).

The transfer itself is pooch's ``HTTPDownloader`` (requests: redirects, timeouts, the progress
hook). pooch neither resumes an interrupted download (it starts again in a fresh temporary file)
nor says more than "hash mismatch"; kept here is what it does not do (see docs/DESIGN.md):
- ``fetch`` writes to ``<dest>.part``, locked so two jobs cannot append to one file, and renames it
  onto ``dest`` only once the download is complete and its sha256 matches. An interrupted download
  keeps its ``.part`` file and the next call resumes it with an HTTP Range request when the
  server supports that.
- every failure is a UserError saying what happened and what to do (a wrong checksum of an HTML
  page says that the URL probably gives a web page or needs a login).
"""

import fcntl
import logging
import math
import os
import re
import time
import urllib.parse
from pathlib import Path, PurePosixPath

from deepbc.data.archives import CheckedArchive, ExtractLimits, extract_checked, open_checked, top_level
from deepbc.jobs.errors import UserError
from deepbc.jobs.logs import Progress, format_seconds

LOG = logging.getLogger("deepbc.data.download")

CHUNK = 1 << 20
USER_AGENT = "deepbc/0.1 (pooch)"
# Long enough for slow academic servers, short enough that a dead one is reported within minutes.
DEFAULT_TIMEOUT = 60.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def fetch(url: str, dest: Path, sha256: str | None, progress: bool = True, *,
          timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``url`` to ``dest`` and verify its sha256 (skipped when ``sha256`` is None or "").

    If ``dest`` already exists with the expected sha256 (or exists and no sha256 is given) nothing
    is downloaded. Progress is logged in MB and MB/s every few seconds when ``progress`` is true.
    Raises UserError for network and HTTP errors, an interrupted transfer (rerun to resume) and a
    checksum mismatch (the bad download is deleted).
    """
    dest = Path(dest)
    want = _normalise_sha256(sha256, url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UserError(f"cannot download {url!r}: only http:// and https:// URLs are supported",
                        where=str(dest),
                        fix=f"give an http(s) URL, or put the file at {dest} yourself")
    if dest.is_dir():
        raise UserError(f"the download target {dest} is a folder, not a file",
                        where=str(dest), fix="remove or rename that folder, then run again")
    if dest.is_file():
        if want is None:
            LOG.info("%s already present; no sha256 given, so it is not verified", dest)
            return dest
        have = sha256_file(dest)
        if have == want:
            LOG.info("%s already present, sha256 verified", dest)
            return dest
        # Known bad for this configuration: remove it so it cannot be mistaken for the real file.
        LOG.warning("%s exists but its sha256 is %s, not the expected %s; deleting it and "
                    "downloading again", dest, have, want)
        dest.unlink()

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b") as fh:
        try:
            # Two jobs appending to one .part file would corrupt it.
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another process is already downloading into {part}",
                            where=url, fix="wait for it to finish, then run again") from None
        try:
            content_type = _download_into(fh, url, dest, part, progress, timeout)
        except BaseException:
            # Keep a partial download for resuming; an empty one is just clutter.
            if os.fstat(fh.fileno()).st_size == 0:
                part.unlink(missing_ok=True)
            raise
        os.fsync(fh.fileno())
        have = sha256_file(part)
        if want is not None and have != want:
            part.unlink()
            html = (" The server sent an HTML page (Content-Type text/html), not the file: the URL "
                    "may point to a web page or need a login."
                    if content_type.startswith("text/html") else "")
            raise UserError(
                f"sha256 mismatch for the download of {url}: expected {want}, got {have}.{html}",
                where=str(dest),
                fix=("the bad download was deleted. Check the url and sha256 in the config (a "
                     "corrupted transfer: just run again), or download the file yourself, put it "
                     f"at {dest} and make sure `sha256sum {dest}` prints {want}"))
        if want is None:
            LOG.warning("no sha256 given for %s, so the download is not verified; its sha256 is %s "
                        "(put it in the config to pin the file)", url, have)
        os.replace(part, dest)
    LOG.info("saved %s (sha256 %s)", dest, have)
    return dest


class _RangeRefused(Exception):
    """HTTP 416 to a resume request: the partial file is no prefix of what the server has now."""


def _download_into(fh, url: str, dest: Path, part: Path, progress: bool, timeout: float) -> str:
    """Fill the open ``.part`` file from ``url``, resuming from its current size when possible.

    Returns the response's Content-Type.
    """
    offset = os.fstat(fh.fileno()).st_size
    try:
        return _transfer(fh, url, dest, part, offset, progress, timeout)
    except _RangeRefused:
        LOG.info("the server refused to resume %s; downloading it from the start", part)
        return _transfer(fh, url, dest, part, 0, progress, timeout)


def _transfer(fh, url: str, dest: Path, part: Path, offset: int, progress: bool, timeout: float) -> str:
    """One request through pooch's HTTPDownloader, asking for bytes from ``offset`` on."""
    import pooch
    import requests

    answer = {}
    bar = _PoochBar(fh, f"downloading {dest.name}") if progress else False

    def on_response(resp, *args, **kwargs):
        # Runs once the headers are in, before pooch writes a byte: only now is it known whether
        # the server resumes (206 from ``offset``) or sends the whole file (200).
        if resp.is_redirect or not resp.ok:
            return
        start = offset if offset and _range_start(resp) == offset else 0
        if start:
            LOG.info("resuming %s at %.1f MB", url, start / 1e6)
        elif offset:
            LOG.info("the server does not resume downloads; downloading %s from the start", url)
        fh.seek(start)
        fh.truncate(start)
        # On a body shorter than its Content-Length urllib3 raises and drops the bytes of the chunk it
        # was filling; unchecked, every byte received reaches the .part file (to resume from), and
        # the length is checked once the body ends.
        resp.raw.enforce_content_length = False
        length = resp.headers.get("Content-Length")
        answer.update(start=start, content_type=resp.headers.get("Content-Type", ""),
                      expected=start + int(length) if length and length.isdigit() else None)
        if bar:
            bar.begin(start)

    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK, timeout=timeout, headers=headers,
                                      hooks={"response": on_response})
    try:
        downloader(url, fh, None)
    except requests.exceptions.HTTPError as err:
        status = err.response.status_code
        if offset and status == 416:
            raise _RangeRefused from None
        raise _network_error(url, dest, f"the server answered HTTP {status} {err.response.reason}") from None
    except (requests.exceptions.RequestException, OSError) as err:
        if "start" not in answer:
            raise _network_error(url, dest, f"could not connect ({err})") from None
        fh.flush()
        raise _interrupted(url, dest, part, fh.tell(), answer["expected"], err) from None
    fh.flush()
    done = fh.tell()
    if answer["expected"] is not None and done != answer["expected"]:
        raise _interrupted(url, dest, part, done, answer["expected"], "the connection closed early")
    if bar:
        took = time.monotonic() - bar.log.start
        got = (done - answer["start"]) / 1e6
        LOG.info("downloaded %s: %.1f MB in %.1f s (%.2f MB/s)", dest.name, got, took, got / max(took, 1e-9))
    return answer["content_type"]


def _range_start(resp) -> int | None:
    """First byte position of a 206 Partial Content answer, else None."""
    if resp.status_code != 206:
        return None
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


def _network_error(url: str, dest: Path, what: str) -> UserError:
    return UserError(f"could not download {url}: {what}", where=url,
                     fix=("check the URL and your network connection and run again, or download the "
                          f"file yourself and put it at {dest}"))


def _interrupted(url, dest, part, done, expected, why) -> UserError:
    of = f" of {expected / 1e6:.1f} MB" if expected is not None else ""
    return UserError(f"the download of {url} stopped after {done / 1e6:.1f} MB{of}: {why}",
                     where=str(part),
                     fix=("run again to resume it (the partial file is kept), or download the file "
                          f"yourself and put it at {dest}"))


def _normalise_sha256(sha256: str | None, url: str) -> str | None:
    if sha256 is None or not sha256.strip():
        return None
    value = sha256.strip().lower()
    if not _SHA256.fullmatch(value):
        raise UserError(f"{sha256!r} is not a sha256 (64 hexadecimal characters)", where=url,
                        fix="give the sha256 the file's publisher lists, or leave it empty to skip "
                            "verification (the computed sha256 is then logged)")
    return value


class _MBProgress(Progress):
    """Progress in MB and MB/s; the total may be unknown (no Content-Length)."""

    def __init__(self, total_bytes: int | None, what: str, already: int = 0):
        super().__init__(total_bytes if total_bytes is not None else math.inf, what, unit="MB/s")
        self.done = self.already = already

    def line(self, now: float | None = None, **extra) -> str:
        now = time.monotonic() if now is None else now
        rate = (self.done - self.already) / max(now - self.start, 1e-9)
        if self.total == math.inf:
            return f"{self.what}: {self.done / 1e6:.1f} MB, {rate / 1e6:.2f} MB/s"
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        return (f"{self.what}: {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                f"({100 * self.done / max(self.total, 1):.0f}%), {rate / 1e6:.2f} MB/s, "
                f"ETA {format_seconds(eta)}")


class _PoochBar:
    """The progress bar pooch's HTTPDownloader drives (``total``, ``update``, ``reset``, ``close``),
    logged as lines by _MBProgress rather than drawn (the workflow's logs are files). It counts the
    ``.part`` file's size, so a resumed download includes what it had and the count is exact
    (pooch reports whole chunks)."""

    def __init__(self, fh, what: str):
        self.fh, self.what, self.offset = fh, what, 0
        self.log = _MBProgress(None, what)

    def begin(self, offset: int) -> None:
        self.offset = offset
        self.log = _MBProgress(None, self.what, offset)

    @property
    def total(self) -> float:
        return self.log.total

    @total.setter
    def total(self, length: int) -> None:
        # pooch sets the answer's Content-Length, 0 when the server gives none.
        self.log.total = self.offset + length if length else math.inf

    def update(self, _n: int) -> None:
        if grown := self.fh.tell() - self.log.done:
            self.log.update(grown)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def archive_name(url: str) -> str:
    """File name of the archive a URL points to (its last path segment, unquoted)."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    name = PurePosixPath(path).name
    if path.endswith("/") or name in ("", ".", ".."):
        raise UserError(f"cannot tell the archive's file name from the URL {url!r}", where=url,
                        fix="use a URL that ends in the archive's file name, e.g. "
                            ".../BreaKHis_v1.tar.gz")
    return name


def ensure_root(root: Path, url: str, sha256: str, allow_download: bool,
                download_dir: Path, limits: ExtractLimits) -> None:
    """Make sure a dataset folder exists, downloading and extracting its archive when allowed.

    - ``root`` exists and is non-empty: nothing happens.
    - ``url`` is set and ``allow_download`` is true: the archive (named after the URL's last
      segment) is fetched into ``download_dir`` (and kept there, so a rerun needs no download),
      verified against ``sha256`` (empty: not verified, the computed hash is logged) and
      extracted (within ``limits``, see ``deepbc.data.archives.safe_extract``) so that ``root`` appears:
        * if ``root`` or one of its parents is named like a top-level folder of the archive, into
          that folder's parent. BreakHis: root ``/data/BreaKHis_v1`` (or
          ``/data/BreaKHis_v1/histology_slides/breast``) and ``BreaKHis_v1.tar.gz`` holding
          ``BreaKHis_v1/...`` extract into ``/data``. If the archive then lacks the path down to
          ``root``, a UserError lists its top-level entries and nothing is extracted.
        * otherwise into ``root`` itself: the archive holds the dataset's contents (class
          folders), or ``root`` is the folder meant to hold the archive's top-level folder.
    - otherwise nothing happens; the caller reports a still missing root in its own words.

    UserError is raised only for download and extraction problems.
    """
    root, download_dir = Path(root), Path(download_dir)
    if root.is_dir() and any(root.iterdir()):
        return
    if not url or not allow_download:
        return
    archive = fetch(url, download_dir / archive_name(url), sha256 or None)
    with open_checked(archive, limits) as arc:
        into = _extraction_folder(root, arc)
        LOG.info("extracting %s into %s so that %s appears", archive, into, root)
        extract_checked(arc, into)
    if not root.is_dir():
        raise UserError(f"after extracting {archive}, {root} is a file, not a folder", where=str(root),
                        fix="check that the URL is the right archive and the dataset folder setting")


def _extraction_folder(root: Path, arc: CheckedArchive) -> Path:
    tops = top_level(arc.members)
    if not tops:
        raise UserError(f"{arc.path} is empty", where=str(arc.path),
                        fix="check the URL; delete the archive and download it again")
    anchor = next((p for p in (root, *root.parents) if tops.get(p.name)), None)
    if anchor is None:
        return root
    rel = root.relative_to(anchor.parent).as_posix()
    if not any(n == rel or n.startswith(rel + "/") for n in arc.names):
        raise UserError(
            f"{arc.path} does not contain {rel}/, so extracting it into {anchor.parent} would not "
            f"create {root}; its top-level entries are: {', '.join(sorted(tops))}",
            where=str(root),
            fix="nothing was extracted; check the URL, or set the dataset folder to where the data "
                "lands in this archive")
    return anchor.parent
