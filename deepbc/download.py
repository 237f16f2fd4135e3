"""Downloads with progress and sha256 verification, and extraction of tar/zip archives that refuses
anything able to write outside its target folder.

Used for the datasets (``ensure_root``, called by the dataset check rule) and for the TF-Slim
ImageNet checkpoint archives (``fetch`` + ``safe_extract``).

Nothing here ever leaves a file or folder that looks complete but is not:
- ``fetch`` writes to ``<dest>.part`` and renames it onto ``dest`` only once the download is
  complete and its sha256 matches. An interrupted download keeps its ``.part`` file and the next
  call resumes it with an HTTP Range request when the server supports that.
- ``safe_extract`` checks every member before writing anything, extracts into a hidden temporary
  folder inside the target, and only then renames each top-level entry into place.
"""

import contextlib
import fcntl
import hashlib
import http.client
import logging
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deepbc.errors import UserError
from deepbc.logs import Progress, format_seconds

LOG = logging.getLogger("deepbc.download")

CHUNK = 1 << 20
USER_AGENT = "deepbc/0.1 (Python urllib)"
# Long enough for slow academic servers, short enough that a dead one is reported within minutes.
DEFAULT_TIMEOUT = 60.0
# Offending archive members listed in an error message (the rest are counted).
MAX_LISTED = 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
            digest, content_type = _download_into(fh, url, dest, part, progress, timeout)
        except BaseException:
            # Keep a partial download for resuming; an empty one is just clutter.
            if os.fstat(fh.fileno()).st_size == 0:
                part.unlink(missing_ok=True)
            raise
        have = digest.hexdigest()
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
        os.fsync(fh.fileno())
        os.replace(part, dest)
    LOG.info("saved %s (sha256 %s)", dest, have)
    return dest


def _download_into(fh, url: str, dest: Path, part: Path, progress: bool, timeout: float):
    """Fill the open ``.part`` file from ``url``, resuming from its current size when possible.

    Returns (sha256 object over the whole file, the response Content-Type).
    """
    offset = os.fstat(fh.fileno()).st_size
    resp = _open(url, dest, offset, timeout)
    if offset and resp.status == 416:
        # The partial file is no prefix of what the server has now: start from scratch.
        LOG.info("the server refused to resume %s; downloading it from the start", part)
        resp.close()
        offset = 0
        resp = _open(url, dest, 0, timeout)
    with resp:
        if offset:
            start = _range_start(resp)
            if start == offset:
                LOG.info("resuming %s at %.1f MB", url, offset / 1e6)
            else:
                LOG.info("the server does not resume downloads; downloading %s from the start", url)
                offset = 0
        fh.seek(0)
        fh.truncate(offset)
        digest = hashlib.sha256()
        while fh.tell() < offset:
            digest.update(fh.read(min(CHUNK, offset - fh.tell())))
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        bar = _MBProgress(expected, f"downloading {dest.name}", offset) if progress else None
        done = offset
        try:
            while chunk := resp.read(CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if bar:
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            fh.flush()
            raise _interrupted(url, dest, part, done, expected, err) from None
        fh.flush()
        if expected is not None and done != expected:
            raise _interrupted(url, dest, part, done, expected, "the connection closed early")
        if bar:
            took = time.monotonic() - bar.start
            LOG.info("downloaded %s: %.1f MB in %.1f s (%.2f MB/s)", dest.name,
                     (done - offset) / 1e6, took, (done - offset) / 1e6 / max(took, 1e-9))
        return digest, resp.headers.get("Content-Type", "")


def _open(url: str, dest: Path, offset: int, timeout: float):
    """Open ``url`` (asking for bytes from ``offset`` on); HTTP 416 is returned, not raised."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if offset and err.code == 416:
            return err
        err.close()
        raise _network_error(url, dest, f"the server answered HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _network_error(url, dest, f"could not connect ({err.reason})") from None
    except (OSError, http.client.HTTPException) as err:
        raise _network_error(url, dest, f"the connection failed ({err!r})") from None


def _range_start(resp) -> int | None:
    """First byte position of a 206 Partial Content answer, else None."""
    if resp.status != 206:
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


# ---------------------------------------------------------------------------------------------
# Extraction


@dataclass
class _Member:
    raw: object  # TarInfo or ZipInfo
    name: str  # normalised POSIX path inside the archive, "" for the archive root itself
    is_dir: bool
    size: int
    problem: str | None
    compressed: int | None = None  # zip only: tar members are compressed together


@dataclass
class _Checked:
    """An open archive whose members all passed the safety checks."""
    path: Path
    kind: str  # "tar" or "zip"
    handle: object  # TarFile or ZipFile
    members: list[_Member]  # without the archive root entry ("./")
    limits: "ExtractLimits | None" = None

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


# Members (or, in a tar, the whole archive) smaller than this are not held to the compression
# ratio: a small file of repeated bytes compresses enormously and harms nobody.
RATIO_FLOOR = 1 << 20


@dataclass(frozen=True)
class ExtractLimits:
    """How much an archive may unpack to: in total, and relative to its compressed size.

    ``config``: where the values come from, for messages (e.g. ``datasets.breakhis``).
    """
    max_total_bytes: float
    max_ratio: float
    config: str

    @classmethod
    def from_config(cls, max_extracted_gb: float, max_compression_ratio: float, config: str) -> "ExtractLimits":
        return cls(max_extracted_gb * 1e9, max_compression_ratio, config)


def safe_extract(archive: Path, target: Path, limits: ExtractLimits | None = None) -> list[str]:
    """Extract a tar (.tar, .tar.gz, .tgz, also bz2/xz) or zip archive into ``target``.

    Every member is checked before anything is written. Refused, with a UserError listing them:
    absolute paths, '..' components, backslashes, symbolic and hard links (all of them: the
    datasets and checkpoints fetched here contain only files and folders, and a link is the
    classic way to write outside the target), device files, FIFOs and other special members.
    The archive is extracted into a hidden temporary folder inside ``target``; each top-level
    entry is then renamed into ``target``, so an interrupted extraction leaves no complete-looking
    entry (the temporary folder is removed; only a killed process can leave a hidden
    ``.<archive>.*.extracting`` folder, which may be deleted). An existing top-level entry is only
    replaced when it is an empty folder; anything else is refused.

    ``limits``: refuse, before writing anything, an archive whose headers declare more than
    ``max_total_bytes`` in all, or a member (a tar: the whole archive, whose members are
    compressed together) of over ``RATIO_FLOOR`` bytes that unpacks to more than ``max_ratio``
    times its compressed size; the total is enforced again while writing, since headers can lie.
    None: no limits (the official checkpoint archives, whose URLs are fixed in the code).

    Returns the extracted member names (normalised POSIX paths, in archive order).
    """
    with _open_checked(archive, limits) as arc:
        return _extract_checked(arc, Path(target))


@contextlib.contextmanager
def _open_checked(archive: Path, limits: ExtractLimits | None = None):
    """Open ``archive`` and check all its members (and sizes against ``limits``); yield a _Checked.

    Archive, decompression and disk errors, in the checks or in the caller's block, become a
    UserError."""
    archive = Path(archive)
    if not archive.is_file():
        raise UserError(f"archive {archive} does not exist", where=str(archive),
                        fix="download it first (or check the path)")
    try:
        with _open_archive(archive) as (kind, handle):
            members = _tar_members(handle) if kind == "tar" else _zip_members(handle)
            _refuse_unsafe(archive, members)
            if limits is not None:
                _refuse_oversized(archive, kind, members, limits)
            yield _Checked(archive, kind, handle, [m for m in members if m.name], limits)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError) as err:
        # zlib/gzip/lzma errors, truncated archives, encrypted zips and disk errors end up here.
        raise UserError(f"could not extract {archive}: {err}", where=str(archive),
                        fix="if the archive is damaged, delete it and download it again; if the "
                            "disk is full, free some space; then run again") from None


def _extract_checked(arc: _Checked, target: Path) -> list[str]:
    tops = _top_level(arc.members)
    _refuse_conflicts(arc.path, target, tops)
    _check_space(arc.path, target, sum(m.size for m in arc.members))
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arc.path.name}.", suffix=".extracting", dir=target))
    try:
        bar = Progress(len(arc.members), f"extracting {arc.path.name}", unit="members")
        budget = _Budget(arc.path, arc.limits)
        if arc.kind == "tar":
            _extract_tar(arc.handle, arc.members, tmp, bar, budget)
        else:
            _extract_zip(arc.handle, arc.members, tmp, bar, budget)
        for top in sorted(tops):
            os.replace(tmp / top, target / top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOG.info("extracted %d members of %s into %s", len(arc.members), arc.path, target)
    return arc.names


@contextlib.contextmanager
def _open_archive(archive: Path):
    """Yield ("tar", TarFile) or ("zip", ZipFile); the format is recognised by content."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            yield "tar", tf
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield "zip", zf
    else:
        raise UserError(f"{archive} is neither a tar nor a zip archive", where=str(archive),
                        fix="check the URL (it may give a web page instead of the file); supported "
                            "formats are .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz and .zip")


def _normalise_name(name: str) -> tuple[str, str | None]:
    """(POSIX path without '.' parts, problem or None)."""
    if "\\" in name:
        # A Windows separator: '..\\x' means '../x' to some tools and a plain name to others.
        return name, "backslash in the name (ambiguous path separator)"
    if name.startswith("/"):
        return name, "absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return name, "'..' component (would land outside the target)"
    return "/".join(parts), None


def _tar_members(tf: tarfile.TarFile) -> list[_Member]:
    out = []
    for ti in tf.getmembers():
        name, problem = _normalise_name(ti.name)
        if problem is None:
            if ti.issym():
                problem = f"symbolic link to {ti.linkname!r} (links are refused)"
            elif ti.islnk():
                problem = f"hard link to {ti.linkname!r} (links are refused)"
            elif ti.ischr() or ti.isblk():
                problem = "device file"
            elif ti.isfifo():
                problem = "FIFO"
            elif not (ti.isreg() or ti.isdir()):
                problem = f"unsupported tar member type {ti.type!r}"
            elif not name and not ti.isdir():
                problem = "file without a name"
        out.append(_Member(ti, name, ti.isdir(), ti.size if ti.isreg() else 0, problem))
    return out


def _zip_members(zf: zipfile.ZipFile) -> list[_Member]:
    out = []
    for zi in zf.infolist():
        name, problem = _normalise_name(zi.filename)
        mode = zi.external_attr >> 16
        if problem is None and zi.create_system == 3 and mode:  # Unix-made: mode bits are meaningful
            if stat.S_ISLNK(mode):
                problem = "symbolic link (links are refused)"
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                problem = "device file"
            elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                problem = "FIFO or socket"
        if problem is None and not name and not zi.is_dir():
            problem = "file without a name"
        out.append(_Member(zi, name, zi.is_dir(), 0 if zi.is_dir() else zi.file_size, problem,
                           0 if zi.is_dir() else zi.compress_size))
    return out


def _refuse_unsafe(archive: Path, members: list[_Member]) -> None:
    bad = [m for m in members if m.problem]
    if not bad:
        return
    listed = [f"  - {_raw_name(m)!r}: {m.problem}" for m in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        listed.append(f"  ... and {len(bad) - MAX_LISTED} more")
    raise UserError(
        f"refusing to extract {archive}: {len(bad)} member(s) could write outside the target "
        "folder or are not plain files or folders:\n" + "\n".join(listed),
        where=str(archive),
        fix=("nothing was extracted. Absolute paths, '..', links and special files are refused "
             "because a crafted archive can use them to overwrite files anywhere. Check that the "
             "URL gives the archive you expect; if you trust it, extract it yourself and point "
             "the config at the extracted folder"))


def _raw_name(m: _Member) -> str:
    return m.raw.name if isinstance(m.raw, tarfile.TarInfo) else m.raw.filename


def _top_level(members: list[_Member]) -> dict[str, bool]:
    """Top-level entry -> whether it is a folder."""
    tops: dict[str, bool] = {}
    for m in members:
        head, _, rest = m.name.partition("/")
        tops[head] = tops.get(head, False) or bool(rest) or m.is_dir
    return tops


def _refuse_conflicts(archive: Path, target: Path, tops: dict[str, bool]) -> None:
    def replaceable(top: str) -> bool:
        path = target / top
        if not os.path.lexists(path):
            return True
        # rename() may replace an empty folder with a folder, nothing else.
        return tops[top] and path.is_dir() and not path.is_symlink() and not any(path.iterdir())

    clash = sorted(t for t in tops if not replaceable(t))
    if clash:
        raise UserError(
            f"cannot extract {archive} into {target}: these entries already exist there: "
            f"{', '.join(clash)}",
            where=str(target),
            fix="nothing was extracted; move or delete those entries (or use them as they are), "
                "then run again")


def _check_space(archive: Path, target: Path, needed: int) -> None:
    probe = target
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise UserError(
            f"not enough disk space to extract {archive}: it needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free",
            where=str(target), fix="free some space or extract to another disk")


def _extract_tar(tf: tarfile.TarFile, keep: list[_Member], tmp: Path, bar: Progress, budget: "_Budget") -> None:
    def counted():
        for m in keep:
            # A tar member's data is exactly the size its header gives.
            budget.spend(m, m.size)
            yield m.raw
            bar.update()

    # Second layer of defence where Python has it (3.11.4+); our own checks above give the message.
    options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        tf.extractall(tmp, members=counted(), **options)
    except tarfile.FilterError as err:
        raise UserError(f"refusing to extract {tf.name}: {err}", where=str(tf.name),
                        fix="check that the URL gives the archive you expect") from None


def _extract_zip(zf: zipfile.ZipFile, keep: list[_Member], tmp: Path, bar: Progress, budget: "_Budget") -> None:
    for m in keep:
        dest = tmp / m.name
        if m.is_dir:
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # zipfile stops a member at its declared size (then checks the CRC); the bytes are
            # counted as they are written all the same.
            with zf.open(m.raw) as src, open(dest, "wb") as dst:
                while chunk := src.read(CHUNK):
                    budget.spend(m, len(chunk))
                    dst.write(chunk)
        bar.update()


class _Budget:
    """The running total of bytes written, held to ``limits.max_total_bytes``."""

    def __init__(self, archive: Path, limits: "ExtractLimits | None"):
        self.archive, self.limits, self.total = archive, limits, 0

    def spend(self, member: _Member, n: int) -> None:
        self.total += n
        if self.limits is not None and self.total > self.limits.max_total_bytes:
            raise self.refusal(f"extracting member {member.name!r} brings the total past the "
                               f"{_gb(self.limits.max_total_bytes)} allowed by {self.limits.config}.max_extracted_gb")

    def refusal(self, what: str) -> UserError:
        return _limit_error(self.archive, what, self.limits.config)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def _limit_error(archive: Path, what: str, config: str) -> UserError:
    return UserError(f"refusing to extract {archive}: {what}", where=str(archive),
                     fix=("nothing was extracted. A small archive that unpacks to a huge size (a "
                          "decompression bomb) can fill the disk; check that the URL gives the archive you "
                          f"expect. If it is right, raise max_extracted_gb / max_compression_ratio under "
                          f"{config} in the config"))


def _refuse_oversized(archive: Path, kind: str, members: list[_Member], limits: ExtractLimits) -> None:
    """The header checks: the declared total, and the compression ratio (per zip member; a tar's
    members are compressed together, so the whole archive's)."""
    total = sum(m.size for m in members)
    if total > limits.max_total_bytes:
        largest = max(members, key=lambda m: m.size)
        raise _limit_error(archive, f"its members add up to {_gb(total)} (the largest, {largest.name!r}, "
                                    f"{_gb(largest.size)}), more than the {_gb(limits.max_total_bytes)} allowed by "
                                    f"{limits.config}.max_extracted_gb",
                           limits.config)
    if kind == "zip":
        checked = [(f"member {m.name!r}", m.size, m.compressed) for m in members if m.size > RATIO_FLOOR]
    else:
        checked = [("the archive", total, archive.stat().st_size)] if total > RATIO_FLOOR else []
    for what, size, packed in checked:
        ratio = size / max(packed, 1)
        if ratio > limits.max_ratio:
            raise _limit_error(archive, f"{what} unpacks to {size:,} bytes from {packed:,} compressed (ratio "
                                        f"{ratio:,.0f}), more than the {limits.max_ratio:g} allowed by "
                                        f"{limits.config}.max_compression_ratio", limits.config)


# ---------------------------------------------------------------------------------------------
# Datasets


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
      extracted (within ``limits``, see ``safe_extract``) so that ``root`` appears:
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
    with _open_checked(archive, limits) as arc:
        into = _extraction_folder(root, arc)
        LOG.info("extracting %s into %s so that %s appears", archive, into, root)
        _extract_checked(arc, into)
    if not root.is_dir():
        raise UserError(f"after extracting {archive}, {root} is a file, not a folder", where=str(root),
                        fix="check that the URL is the right archive and the dataset folder setting")


def _extraction_folder(root: Path, arc: _Checked) -> Path:
    tops = _top_level(arc.members)
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
