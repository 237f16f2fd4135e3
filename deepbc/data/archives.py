"""Extraction of tar/zip archives that refuses anything able to write outside its target folder.

Used for the datasets (``deepbc.data.download.ensure_root``) and the TF-Slim checkpoint archives
(``deepbc.training.checkpoints``). Python's ``tarfile`` data filter (``extractall(filter="data")``) writes
the tar members; kept here is only what it does not do (see docs/DESIGN.md):
- every member is checked before anything is written, and a refusal lists all offenders (the
  filter stops at the first one, after writing the members before it); the filter itself runs in
  that check, so '..', links leading outside and special files are refused in its terms;
- a stricter policy: absolute names are refused (the filter strips the slash), so are all links
  (the datasets and checkpoints hold only files and folders) and backslashes in names;
- zip archives (``zipfile`` silently rewrites unsafe names and has no filter), with the same checks;
- limits on the total size and the compression ratio (decompression bombs);
- extraction into a hidden temporary folder inside the target, whose top-level entries are then
  renamed into place, so an interrupted extraction leaves no complete-looking entry, and
  existing entries are never overwritten.
"""

import contextlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deepbc.jobs.errors import UserError
from deepbc.jobs.logs import Progress

LOG = logging.getLogger("deepbc.data.archives")

CHUNK = 1 << 20
# Offending archive members listed in an error message (the rest are counted).
MAX_LISTED = 20

@dataclass
class _Member:
    raw: object  # TarInfo or ZipInfo
    name: str  # normalised POSIX path inside the archive, "" for the archive root itself
    is_dir: bool
    size: int
    problem: str | None
    compressed: int | None = None  # zip only: tar members are compressed together


@dataclass
class CheckedArchive:
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

    ``config``: where the values come from, for messages: a config section (e.g.
    ``datasets.breakhis``, whose ``max_extracted_gb`` / ``max_compression_ratio`` the user may
    raise), or, with ``in_config`` false, a description of limits fixed in the code.
    """
    max_total_bytes: float
    max_ratio: float
    config: str
    in_config: bool = True

    def allowed_by(self, key: str) -> str:
        return f"{self.config}.{key}" if self.in_config else self.config

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
    with open_checked(archive, limits) as arc:
        return extract_checked(arc, Path(target))


@contextlib.contextmanager
def open_checked(archive: Path, limits: ExtractLimits | None = None):
    """Open ``archive`` and check all its members (and sizes against ``limits``); yield a CheckedArchive.

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
            yield CheckedArchive(archive, kind, handle, [m for m in members if m.name], limits)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError) as err:
        # zlib/gzip/lzma errors, truncated archives, encrypted zips and disk errors end up here.
        raise UserError(f"could not extract {archive}: {err}", where=str(archive),
                        fix="if the archive is damaged, delete it and download it again; if the "
                            "disk is full, free some space; then run again") from None


def extract_checked(arc: CheckedArchive, target: Path) -> list[str]:
    tops = top_level(arc.members)
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
            else:
                problem = _data_filter_problem(ti)
            if problem is None and not name and not ti.isdir():
                problem = "file without a name"
        out.append(_Member(ti, name, ti.isdir(), ti.size if ti.isreg() else 0, problem))
    return out


# The data filter only joins and normalises member names onto the destination, so the check
# before extraction can run it against a folder that does not exist.
_FILTER_CHECK_ROOT = "/nonexistent-deepbc-extraction-check"


def _data_filter_problem(ti: tarfile.TarInfo) -> str | None:
    """The data filter's verdict on a member (devices, FIFOs and other special files), or None."""
    try:
        tarfile.data_filter(ti, _FILTER_CHECK_ROOT)
    except tarfile.FilterError as err:
        return str(err)
    return None


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


def top_level(members: list[_Member]) -> dict[str, bool]:
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

    # The filter writes the members (and drops setuid bits and the like); the checks above gave the message.
    try:
        tf.extractall(tmp, members=counted(), filter="data")
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
                               f"{_gb(self.limits.max_total_bytes)} allowed by {self.limits.allowed_by('max_extracted_gb')}")

    def refusal(self, what: str) -> UserError:
        return _limit_error(self.archive, what, self.limits)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def _limit_error(archive: Path, what: str, limits: ExtractLimits) -> UserError:
    raise_them = (f"If it is right, raise max_extracted_gb / max_compression_ratio under {limits.config} in the "
                  "config" if limits.in_config else
                  "If it is right, extract it yourself and put its contents where they are expected")
    return UserError(f"refusing to extract {archive}: {what}", where=str(archive),
                     fix=("nothing was extracted. A small archive that unpacks to a huge size (a "
                          "decompression bomb) can fill the disk; check that the URL gives the archive you "
                          f"expect. {raise_them}"))


def _refuse_oversized(archive: Path, kind: str, members: list[_Member], limits: ExtractLimits) -> None:
    """The header checks: the declared total, and the compression ratio (per zip member; a tar's
    members are compressed together, so the whole archive's)."""
    total = sum(m.size for m in members)
    if total > limits.max_total_bytes:
        largest = max(members, key=lambda m: m.size)
        raise _limit_error(archive, f"its members add up to {_gb(total)} (the largest, {largest.name!r}, "
                                    f"{_gb(largest.size)}), more than the {_gb(limits.max_total_bytes)} allowed by "
                                    f"{limits.allowed_by('max_extracted_gb')}",
                           limits)
    if kind == "zip":
        checked = [(f"member {m.name!r}", m.size, m.compressed) for m in members if m.size > RATIO_FLOOR]
    else:
        checked = [("the archive", total, archive.stat().st_size)] if total > RATIO_FLOOR else []
    for what, size, packed in checked:
        ratio = size / max(packed, 1)
        if ratio > limits.max_ratio:
            raise _limit_error(archive, f"{what} unpacks to {size:,} bytes from {packed:,} compressed (ratio "
                                        f"{ratio:,.0f}), more than the {limits.max_ratio:g} allowed by "
                                        f"{limits.allowed_by('max_compression_ratio')}", limits)


