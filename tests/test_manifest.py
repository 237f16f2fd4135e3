"""Dataset scanning: every bad-file kind lands in rejects with its reason, duplicates and label
conflicts, folder datasets with and without a patient CSV, clear errors, byte-identical reruns."""

import io
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepbc.data.breakhis import SUBTYPES
from deepbc.data.manifest import (
    BREAKHIS_COLUMNS,
    FOLDER_COLUMNS,
    REJECT_COLUMNS,
    build_manifest,
    check_dataset,
    inspect_file,
)
from deepbc.jobs.errors import UserError
from tests import shared_data, trainkit

REPO = Path(__file__).resolve().parents[1]
TMA_CLASSES = ["breast", "bladder", "lung", "lymphoma"]


def _image(path: Path, seed: int, fmt: str = "PNG", size=(12, 8)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path.read_bytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _bh(code: str, slide: str, mag: int, seq: int, year: str = "14") -> str:
    """Path of a BreakHis image relative to BreaKHis_v1/."""
    tissue, name = SUBTYPES[code]
    letter = tissue[0].upper()
    return (f"histology_slides/breast/{tissue}/SOB/{name}/SOB_{letter}_{code}_{year}-{slide}/{mag}X/"
            f"SOB_{letter}_{code}-{year}-{slide}-{mag}-{seq:03d}.png")


def _corrupt_idat(png: bytes) -> bytes:
    """Flip bytes inside the compressed pixel data, leaving the file length unchanged."""
    start = png.index(b"IDAT") + 4
    data = bytearray(png)
    for i in range(start + 4, start + 12):
        data[i] ^= 0x5A
    return bytes(data)


@pytest.fixture
def breakhis_with_bad_files(tmp_path):
    """A small BreakHis tree holding one file of each reject kind; returns (root, expected rejects)."""
    root = tmp_path / "BreaKHis_v1"
    good = _image(root / _bh("A", "22549AB", 40, 1), 1)
    _image(root / _bh("A", "22549CD", 100, 1), 2)
    _image(root / _bh("F", "14134", 400, 1), 3)
    dc = _image(root / _bh("DC", "13412", 200, 1), 4)
    _write(root / _bh("LC", "13412", 200, 1), dc)
    _image(root / _bh("PC", "190EF", 40, 2, year="15"), 5)
    expected = {
        _bh("A", "22549AB", 40, 3): "zero_bytes",
        _bh("A", "22549AB", 40, 4): "not_an_image",
        _bh("A", "22549AB", 40, 5): "undecodable",
        _bh("A", "22549AB", 40, 6): "truncated",
        _bh("A", "22549AB", 40, 7): "duplicate",
        _bh("A", "22549AB", 40, 8): "not_an_image",
        "histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/photo.png": "unparsable_name",
        _bh("A", "22549AB", 100, 9).replace("/100X/", "/40X/"): "unparsable_name",
        "histology_slides/breast/benign/.DS_Store": "not_an_image",
        "histology_slides/breast/README.txt": "not_an_image",
    }
    paths = list(expected)
    _write(root / paths[0], b"")
    _write(root / paths[1], b"this is text, not a PNG\n")
    _write(root / paths[2], _corrupt_idat(_image(tmp_path / "x.png", 6)))
    whole = _image(tmp_path / "y.png", 7)
    _write(root / paths[3], whole[: len(whole) // 2])
    _write(root / paths[4], good)
    _image(root / paths[5], 8, fmt="GIF")
    _image(root / paths[6], 9)
    _image(root / paths[7], 10)
    _write(root / paths[8], b"\x00\x00\x00\x01Bud1")
    _write(root / paths[9], b"counts by patient\n")
    return root, expected


def test_each_bad_file_lands_in_rejects_with_its_reason(breakhis_with_bad_files):
    root, expected = breakhis_with_bad_files
    manifest, rejects = build_manifest(root, "breakhis")
    assert list(rejects.columns) == REJECT_COLUMNS
    assert dict(zip(rejects["path"], rejects["reason"])) == expected
    details = dict(zip(rejects["path"], rejects["detail"]))
    assert "GIF" in details[_bh("A", "22549AB", 40, 8)]
    assert details[_bh("A", "22549AB", 40, 7)].endswith(f"as {_bh('A', '22549AB', 40, 1)}")
    assert "'photo.png' does not match" in details[
        "histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/photo.png"]
    assert "under '40X'/" in details[_bh("A", "22549AB", 100, 9).replace("/100X/", "/40X/")]
    assert all(details.values())

    assert list(manifest.columns) == BREAKHIS_COLUMNS
    assert manifest["path"].tolist() == sorted(manifest["path"])
    assert len(manifest) == 6
    first = manifest.set_index("path").loc[_bh("A", "22549AB", 40, 1)]
    assert (first["tissue"], first["subtype"], first["subtype_name"], first["slide"], first["patient"],
            first["magnification"], first["seq"], first["year"]) == (
        "benign", "A", "adenosis", "14-22549AB", "14-22549", "40X", 1, 2014)
    assert (first["width"], first["height"], first["format"]) == (12, 8, "png")
    assert first["bytes"] == (root / _bh("A", "22549AB", 40, 1)).stat().st_size
    assert set(manifest["patient"]) == {"14-22549", "14-14134", "14-13412", "15-190"}


@pytest.mark.parametrize("given", [".", "BreaKHis_v1", "BreaKHis_v1/histology_slides/breast"])
def test_paths_are_relative_to_the_root_given(tmp_path, given):
    _image(tmp_path / "BreaKHis_v1" / _bh("A", "22549AB", 40, 1), 1)
    _image(tmp_path / "BreaKHis_v1" / _bh("DC", "2523", 40, 1), 2)
    _write(tmp_path / "BreaKHis_v1.tar.gz", b"not scanned: outside histology_slides/breast")
    manifest, rejects = build_manifest(tmp_path / given, "breakhis")
    assert rejects.empty and len(manifest) == 2
    assert all((tmp_path / given / p).is_file() for p in manifest["path"])
    assert manifest["path"].str.endswith("SOB_B_A-14-22549AB-40-001.png").any()


def test_every_file_lands_in_exactly_one_table(breakhis_with_bad_files):
    root, _ = breakhis_with_bad_files
    manifest, rejects = build_manifest(root, "breakhis")
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    listed = list(manifest["path"]) + list(rejects["path"])
    assert len(listed) == len(set(listed))
    assert set(listed) == on_disk


def test_same_bytes_under_two_labels_stay_flagged_and_same_label_copies_are_duplicates(tmp_path):
    root = tmp_path / "BreaKHis_v1"
    dc = _image(root / _bh("DC", "13412", 40, 1), 1)
    _write(root / _bh("LC", "13412", 40, 1), dc)
    _write(root / _bh("DC", "13412", 40, 2), dc)  # also a same-label copy: a plain duplicate
    _image(root / _bh("DC", "13412", 40, 3), 2)
    _image(root / _bh("TA", "16184", 40, 1), 3)
    manifest, rejects = build_manifest(root, "breakhis")
    flagged = manifest[manifest["label_conflict"]]
    assert flagged["path"].tolist() == [_bh("DC", "13412", 40, 1), _bh("LC", "13412", 40, 1)]
    assert flagged["subtype"].tolist() == ["DC", "LC"]
    assert flagged["sha256"].nunique() == 1
    assert not manifest.set_index("path").loc[_bh("DC", "13412", 40, 3), "label_conflict"]
    assert rejects[["path", "reason"]].values.tolist() == [[_bh("DC", "13412", 40, 2), "duplicate"]]


def test_check_dataset_reruns_byte_identically_with_and_without_a_pool(breakhis_with_bad_files, tmp_path, caplog):
    root, expected = breakhis_with_bad_files
    caplog.set_level(logging.INFO)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        check_dataset("bh", "breakhis", root, out / "m.parquet", out / "r.csv", workers=workers)
        outputs.append(((out / "m.parquet").read_bytes(), (out / "r.csv").read_bytes()))
    assert outputs[0] == outputs[1]
    written = pd.read_parquet(tmp_path / "out1" / "m.parquet")
    assert len(written) == 6 and written["label_conflict"].sum() == 2
    assert len(pd.read_csv(tmp_path / "out1" / "r.csv")) == len(expected)
    log = caplog.text
    assert "16 files scanned, 6 usable, 10 rejected (unreadable: 0, zero_bytes: 1, not_an_image: 4, too_large: 0, " \
           "undecodable: 1, truncated: 1, unsupported_mode: 0, undecodable_name: 0, unparsable_name: 2, " \
           "duplicate: 1)" in log
    assert "label conflict: 1 distinct image(s) filed as malignant/DC vs malignant/LC (slide(s) 14-13412)" in log
    assert "bh: 4 patients" in log
    assert "bh per subtype: A 2 images/1 patients, F 1 images/1 patients, DC 1 images/1 patients" in log


def test_truncation_stays_detected_even_if_someone_enabled_lenient_loading(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    whole = _image(tmp_path / "a.png", 1, size=(64, 64))
    for fmt in ("PNG", "JPEG", "TIFF"):
        data = _image(tmp_path / f"a.{fmt}", 1, fmt=fmt, size=(64, 64))
        cut = _write(tmp_path / f"cut.{fmt}", data[: len(data) * 2 // 3])
        assert inspect_file(str(cut))["reason"] == "truncated", fmt
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it
    # A PNG missing only its IEND chunk has all its pixels, but it is still a cut-off file.
    assert inspect_file(str(_write(tmp_path / "noend.png", whole[:-12])))["reason"] == "truncated"


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_breakhis_root_fails_clearly(tmp_path, make):
    root = tmp_path / "BreaKHis_v1"
    if make == "empty":
        root.mkdir()
    with pytest.raises(UserError) as err:
        build_manifest(root, "breakhis")
    text = str(err.value)
    assert str(root) in text and "BreaKHis_v1.tar.gz" in text and "web.inf.ufpr.br" in text
    assert ("does not exist" if make == "missing" else "empty") in text


def test_breakhis_layout_without_any_file_fails_clearly(tmp_path):
    for tissue in ("benign", "malignant"):
        (tmp_path / "breast" / tissue).mkdir(parents=True)
    with pytest.raises(UserError, match="no files under the breakhis root"):
        build_manifest(tmp_path / "breast", "breakhis")


def test_breakhis_refuses_folder_dataset_options(breakhis_with_bad_files):
    root, _ = breakhis_with_bad_files
    with pytest.raises(UserError, match="folder datasets only"):
        build_manifest(root, "breakhis", classes=["benign"])


@pytest.fixture
def tma_tree(tmp_path):
    """A 4-class folder dataset with PNG, JPEG and TIFF images; returns (root, {path: patient})."""
    root = tmp_path / "tma"
    patients = {}
    for i, cls in enumerate(TMA_CLASSES):
        for j, fmt in enumerate(("PNG", "JPEG", "TIFF")):
            rel = f"{cls}/core{j}.{fmt.lower()}"
            _image(root / rel, 10 * i + j, fmt=fmt)
            patients[rel] = f"P{i}{j % 2}"
    _image(root / "breast/case7/deep.png", 99)
    patients["breast/case7/deep.png"] = "P7"
    return root, patients


def _write_csv(path: Path, patients: dict) -> Path:
    pd.DataFrame({"path": list(patients), "patient": list(patients.values())}).to_csv(path, index=False)
    return path


def test_folder_dataset_with_patient_csv(tma_tree, caplog):
    root, patients = tma_tree
    csv = _write_csv(root / "patients.csv", {**patients, "lung/gone.png": "P9"})
    caplog.set_level(logging.INFO)
    manifest, rejects = build_manifest(root, "folder", classes=TMA_CLASSES, patients_csv=csv)
    assert list(manifest.columns) == FOLDER_COLUMNS
    assert dict(zip(manifest["path"], manifest["patient"])) == patients
    assert (manifest["patient_source"] == "csv").all()
    assert (manifest["slide"] == manifest["patient"]).all()
    assert (manifest["magnification"] == "NA").all()
    assert dict(zip(manifest["path"], manifest["label"]))["breast/case7/deep.png"] == "breast"
    assert set(manifest["format"]) == {"png", "jpeg", "tiff"}
    # The CSV under the root is listed, with a reason that says what it is, not silently skipped.
    assert rejects.values.tolist() == [["patients.csv", "not_an_image",
                                        "the patients CSV (--patients-csv): patient metadata, not an image"]]
    assert "1 of 14 row(s) of the patients CSV" in caplog.text and "lung/gone.png" in caplog.text
    assert "more than one class folder" not in caplog.text


def test_a_csv_patient_with_images_in_two_classes_is_warned_about(tma_tree, caplog):
    root, patients = tma_tree
    csv = _write_csv(root.parent / "patients.csv", {**patients, "lung/core0.png": "P00"})
    caplog.set_level(logging.INFO)
    build_manifest(root, "folder", classes=TMA_CLASSES, patients_csv=csv, dataset="tma")
    assert ("tma: 1 patient(s) of the patients CSV have images in more than one class folder (images per "
            "class): P00 (breast 2, lung 1). The patient-wise split keeps each patient's images together, so such "
            "a patient lands in one split with images of several labels. If these are different patients sharing "
            "an id, give them distinct ids in the patients CSV.") in caplog.text


def test_folder_dataset_without_csv_makes_each_image_its_own_group(tma_tree, caplog):
    root, patients = tma_tree
    caplog.set_level(logging.INFO)
    manifest, rejects = build_manifest(root, "folder", classes=TMA_CLASSES)
    assert rejects.empty
    assert manifest["path"].tolist() == sorted(patients)
    assert (manifest["patient"] == manifest["path"]).all()
    assert (manifest["patient_source"] == "image").all()
    assert "every image is its own patient group" in caplog.text
    assert "per patient_source: image 13 images/13 patients" in caplog.text


def test_folder_dataset_rejects_files_outside_the_class_folders(tma_tree):
    root, _ = tma_tree
    _image(root / "colon/c0.png", 50)
    _image(root / "loose.png", 51)
    _write(root / "notes.txt", b"scanned in 2017\n")
    _write(root / "lung/.hidden/thumb.png", _image(root / "lung/core0.png", 20))  # same bytes, same class
    manifest, rejects = build_manifest(root, "folder", classes=TMA_CLASSES)
    got = {r.path: (r.reason, r.detail) for r in rejects.itertuples()}
    assert got["colon/c0.png"][0] == "unparsable_name" and "'colon', which is not one of" in got["colon/c0.png"][1]
    assert got["loose.png"][0] == "unparsable_name" and "not inside a class folder" in got["loose.png"][1]
    assert got["notes.txt"][0] == "not_an_image"
    assert got["lung/core0.png"] == ("duplicate", got["lung/core0.png"][1])  # ".hidden" sorts first
    assert "lung/.hidden/thumb.png" in got["lung/core0.png"][1]
    assert len(got) == 4 and len(manifest) == 13


def test_folder_dataset_image_missing_from_csv_is_an_error(tma_tree, tmp_path):
    root, patients = tma_tree
    csv = _write_csv(tmp_path / "p.csv", {k: v for k, v in patients.items() if k != "bladder/core1.jpeg"})
    with pytest.raises(UserError, match=r"1 image\(s\) under the root are not in the patients CSV \(bladder/core1"):
        build_manifest(root, "folder", classes=TMA_CLASSES, patients_csv=csv)


@pytest.mark.parametrize("text, message", [
    ("file,patient\na.png,P1\n", r"lacks column\(s\) \['path'\]"),
    ("path,patient\nbreast/core0.png,P1\n./breast/core0.png,P2\n", r"more than once \(line 2, line 3\)"),
    ("path,patient\nbreast/core0.png,\n", r"patient is empty \(line 2\)"),
    ("path,patient\n../x.png,P1\n", "leaves the root"),
])
def test_invalid_patient_csv_is_an_error(tma_tree, tmp_path, text, message):
    root, _ = tma_tree
    csv = _write(tmp_path / "p.csv", text.encode())
    with pytest.raises(UserError, match=message):
        build_manifest(root, "folder", classes=TMA_CLASSES, patients_csv=csv)


def test_folder_dataset_root_and_class_errors(tma_tree, tmp_path):
    root, _ = tma_tree
    with pytest.raises(UserError, match="root does not exist") as err:
        build_manifest(tmp_path / "nope", "folder", classes=TMA_CLASSES, dataset="tma")
    assert "one subfolder per class (breast/, bladder/, lung/, lymphoma/)" in str(err.value)
    (tmp_path / "void").mkdir()
    with pytest.raises(UserError, match="root is empty"):
        build_manifest(tmp_path / "void", "folder", classes=TMA_CLASSES)
    with pytest.raises(UserError, match=r"class folder\(s\) missing .*: kidney"):
        build_manifest(root, "folder", classes=TMA_CLASSES + ["kidney"])
    with pytest.raises(UserError, match="needs its class names"):
        build_manifest(root, "folder")
    shutil.rmtree(root / "lung")
    (root / "lung").mkdir()
    _write(root / "lung/broken.png", b"")
    with pytest.raises(UserError, match="without any usable image in tma: lung"):
        check_dataset("tma", "folder", root, tmp_path / "m.parquet", tmp_path / "r.csv", classes=TMA_CLASSES)
    assert not (tmp_path / "m.parquet").exists()


def _script(*args):
    return trainkit.run_script("check_dataset", *args, timeout=120)


def test_cli_writes_outputs_and_reports_a_missing_root_without_traceback(tma_tree, tmp_path):
    root, patients = tma_tree
    csv = _write_csv(tmp_path / "p.csv", patients)
    out = tmp_path / "out"
    done = _script("--dataset", "tma", "--kind", "folder", "--root", root, "--classes", *TMA_CLASSES,
                   "--patients-csv", csv, "--workers", 2, "--manifest", out / "m.parquet",
                   "--rejects", out / "r.csv", "--log", tmp_path / "log.txt")
    assert done.returncode == 0, done.stderr
    assert len(pd.read_parquet(out / "m.parquet")) == len(patients)
    assert "13 files scanned, 13 usable, 0 rejected" in (tmp_path / "log.txt").read_text()

    done = _script("--dataset", "breakhis", "--kind", "breakhis", "--root", tmp_path / "absent", "--workers", 1,
                   "--manifest", out / "b.parquet", "--rejects", out / "b.csv")
    assert done.returncode == 1
    assert "BreakHis not found: the folder does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "b.parquet").exists()


def test_full_scale_breakhis_layout(tmp_path, caplog):
    """All 7,909 real paths as tiny PNGs (slide 14-13412 byte-identical under DC and LC)."""
    listing = shared_data.breakhis_listing()
    encoded: dict[str, bytes] = {}
    for i, line in enumerate(listing.read_text().split()):
        key = line.split("/")[-1].replace("SOB_M_LC-14-13412", "SOB_M_DC-14-13412")
        if key not in encoded:
            buf = io.BytesIO()
            Image.fromarray(np.full((2, 3, 3), [i % 256, i // 256 % 256, 7], np.uint8)).save(buf, "PNG")
            encoded[key] = buf.getvalue()
        _write(tmp_path / line, encoded[key])
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    manifest, rejects = build_manifest(tmp_path, "breakhis", workers=2)
    elapsed = time.monotonic() - start
    assert rejects.empty
    assert len(manifest) == 7909
    assert manifest["label_conflict"].sum() == 246
    assert set(manifest.loc[manifest["label_conflict"], "slide"]) == {"14-13412"}
    assert manifest["patient"].nunique() == 70
    assert manifest["tissue"].value_counts().to_dict() == {"malignant": 5429, "benign": 2480}
    assert "label conflict: 123 distinct image(s) filed as malignant/DC vs malignant/LC" in caplog.text
    print(f"scanned 7,909 files in {elapsed:.1f} s")


def test_special_files_and_folder_links_are_handled_not_skipped(tma_tree, tmp_path):
    root, patients = tma_tree
    os.mkfifo(root / "lung" / "pipe.png")  # reading it would block forever
    (root / "breast" / "loop").symlink_to(root / "breast")  # would be walked without end
    outside = tmp_path / "elsewhere"
    _image(outside / "linked.png", 77)
    (root / "bladder" / "more").symlink_to(outside)
    manifest, rejects = build_manifest(root, "folder", classes=TMA_CLASSES)
    assert rejects.values.tolist() == [["lung/pipe.png", "not_an_image", "not a regular file"]]
    assert "bladder/more/linked.png" in set(manifest["path"])
    assert len(manifest) == len(patients) + 1


def test_a_file_the_os_refuses_to_read_is_unreadable_with_the_os_error(tma_tree, monkeypatch):
    """Permission denied has its own reason. Tests run as root, whom chmod 000 does not stop, so the
    OS refusal is simulated where every way of opening a file passes."""
    import builtins
    import io as io_module

    root, _ = tma_tree
    denied = root / "lung" / "secret.png"
    _image(denied, 5)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io_module, "open", guarded_open)
    manifest, rejects = build_manifest(root, "folder", classes=TMA_CLASSES)
    assert rejects.values.tolist() == [
        ["lung/secret.png", "unreadable", f"cannot be read: [Errno 13] Permission denied: '{denied}'"]]
    assert "lung/secret.png" not in set(manifest["path"])


def _claiming_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its header (IHDR) claiming another size, checksum fixed."""
    import struct
    import zlib

    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_large_files_are_judged_from_their_header_and_hashed_in_chunks(tma_tree):
    """A 64 MB non-image is rejected from its first bytes, a PNG followed by 64 MB is hashed in
    chunks, an image whose header claims 10^8 pixels is rejected before decoding: memory stays small."""
    import hashlib
    import tracemalloc

    root, _ = tma_tree
    big = 64 << 20
    with open(root / "lung" / "huge.png", "wb") as fh:
        fh.truncate(big)  # sparse: costs no disk
    tail = root / "lung" / "tail.png"
    head = _image(tail, 3)
    with open(tail, "r+b") as fh:
        fh.truncate(len(head) + big)
    _write(root / "lung" / "claims.png", _claiming_size(_image(root / "lung" / "claims.png", 4), 10_000, 10_000))
    tracemalloc.start()
    try:
        manifest, rejects = build_manifest(root, "folder", classes=TMA_CLASSES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reasons = dict(zip(rejects["path"], rejects["reason"]))
    assert reasons == {"lung/huge.png": "not_an_image", "lung/claims.png": "too_large"}
    assert "10000 x 10000 = 100,000,000 pixels" in rejects.set_index("path").loc["lung/claims.png", "detail"]
    row = manifest.set_index("path").loc["lung/tail.png"]
    with open(tail, "rb") as fh:
        assert row["sha256"] == hashlib.file_digest(fh, "sha256").hexdigest()
    assert row["bytes"] == len(head) + big
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_too_large_details_state_the_limit_the_code_enforces_and_the_methods_quote(tmp_path):
    """One limit, imageio.MAX_PIXELS: Pillow's own check (which fires at twice it) never speaks."""
    from deepbc.data import imageio

    png = _image(tmp_path / "small.png", 1)
    limit = f"{imageio.MAX_PIXELS:,}"
    # 5 x 17,895,697 is exactly the limit, 2 x 44,739,243 one pixel more.
    assert 5 * 17_895_697 == imageio.MAX_PIXELS and 2 * 44_739_243 == imageio.MAX_PIXELS + 1
    with imageio.strict(), imageio.open_image(_claiming_size(png, 5, 17_895_697)) as im:
        assert im.size == (5, 17_895_697)
    for width, height in ((2, 44_739_243), (10_000, 10_000), (20_000, 20_000)):
        path = _write(tmp_path / f"{width}x{height}.png", _claiming_size(png, width, height))
        info = inspect_file(str(path))
        assert info["reason"] == "too_large"
        assert info["detail"] == (f"{width} x {height} = {width * height:,} pixels, more than the {limit} accepted; "
                                  f"cut the image into tiles")
    methods = " ".join((REPO / "docs" / "methods.md").read_text().split())
    assert f"`too_large` (over {limit} pixels by its header" in methods


def test_a_path_that_is_not_utf8_is_rejected_with_a_rename_that_works(tma_tree, tmp_path):
    """Linux names are bytes: one that is not UTF-8 cannot be written to the manifest or a CSV, so
    it is a reject whose detail is a bash command; run as given, the file is then accepted."""
    root, patients = tma_tree
    _image(root / "lung" / os.fsdecode(b"zero_\xe9.png"), 60)
    _image(root / "lung" / "zero_\xe9.png", 61)  # its Latin-1 reading is taken: the command picks another name
    _image(root / "breast" / os.fsdecode(b"case\x85") / "deep.png", 62)  # a folder; 0x85 is no printable character
    _image(root / "breast" / os.fsdecode(b"case\x85") / "deeper.png", 63)
    out = tmp_path / "out"
    check_dataset("tma", "folder", root, out / "m.parquet", out / "r.csv", classes=TMA_CLASSES)
    rejects = pd.read_csv(out / "r.csv")
    assert rejects["path"].tolist() == ["breast/case\\x85/deep.png", "breast/case\\x85/deeper.png",
                                        "lung/zero_\\xe9.png"]
    assert (rejects["reason"] == "undecodable_name").all()
    commands = rejects["detail"].str.split("rename it: ").str[1].tolist()
    assert commands == [f"mv -- $'{root}/breast/case\\x85' {root}/breast/case_"] * 2 + [
        f"mv -- $'{root}/lung/zero_\\xe9.png' '{root}/lung/zero_\xe9_2.png'"]
    assert len(pd.read_parquet(out / "m.parquet")) == len(patients) + 1
    for command in dict.fromkeys(commands):
        subprocess.run(["bash", "-c", command], check=True, timeout=30)
    manifest, rejects = build_manifest(root, "folder", classes=TMA_CLASSES)
    assert rejects.empty
    assert {"breast/case_/deep.png", "breast/case_/deeper.png", "lung/zero_\xe9_2.png"} <= set(manifest["path"])


def test_check_dataset_script_lists_a_breakhis_file_whose_name_is_not_utf8(tmp_path):
    root = tmp_path / "BreaKHis_v1"
    _image(root / _bh("A", "22549AB", 40, 1), 1)
    _image(root / _bh("DC", "2523", 40, 1), 3)
    bad = _bh("A", "22549AB", 40, 2).replace("-002.png", "-002\xe9.png")
    _image(root / os.fsdecode(bad.encode("latin-1")), 2)
    out = tmp_path / "out"
    done = _script("--dataset", "breakhis", "--kind", "breakhis", "--root", root, "--workers", 2,
                   "--manifest", out / "m.parquet", "--rejects", out / "r.csv", "--log", tmp_path / "log.txt")
    assert done.returncode == 0, done.stderr
    shown = bad.replace("\xe9", "\\xe9")
    assert pd.read_csv(out / "r.csv")[["path", "reason"]].values.tolist() == [[shown, "undecodable_name"]]
    assert pd.read_parquet(out / "m.parquet")["path"].tolist() == [_bh("A", "22549AB", 40, 1), _bh("DC", "2523", 40, 1)]
    log = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert f"WARNING rejected {shown}: undecodable_name (the path is not valid UTF-8" in log
    assert "Logging error" not in done.stderr
