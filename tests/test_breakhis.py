"""The BreakHis parser against the real 7,909-path listing, its cross-checks, and root resolution."""

import csv
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from deepbc.data import breakhis
from deepbc.data.breakhis import UnparsableName, parse_path, resolve_root
from deepbc.jobs.errors import UserError
from tests import shared_data

REPO = Path(__file__).resolve().parents[1]
GOOD = ("BreaKHis_v1/histology_slides/breast/malignant/SOB/ductal_carcinoma/SOB_M_DC_14-13412/100X/"
        "SOB_M_DC-14-13412-100-001.png")


@pytest.fixture(scope="module")
def breakhis_reference_dir() -> Path:
    return shared_data.breakhis_reference_dir()


@pytest.fixture(scope="module")
def breakhis_listing(breakhis_reference_dir):
    lines = (breakhis_reference_dir / "BreaKHis_v1_filelist.txt").read_text().split()
    return [(line, parse_path(line)) for line in lines]


def test_listing_reproduces_the_published_totals(breakhis_listing):
    records = [r for _, r in breakhis_listing]
    assert len(records) == 7909
    assert Counter(r.tissue for r in records) == {"benign": 2480, "malignant": 5429}
    folders = {Path(line).parts[-3] for line, _ in breakhis_listing}
    assert len(folders) == 82
    # 14-13412 is one slide filed in two subtype folders.
    assert len({r.slide_id for r in records}) == 81
    assert len({r.patient for r in records}) == 70
    assert {r.magnification for r in records} == set(breakhis.MAGNIFICATIONS)
    assert {r.year for r in records} == {2014, 2015}


def test_listing_reproduces_the_published_counts_per_subtype(breakhis_listing, breakhis_reference_dir):
    images = Counter((r.subtype, r.magnification) for _, r in breakhis_listing)
    slide_folders = defaultdict(set)
    for line, r in breakhis_listing:
        slide_folders[r.subtype].add(Path(line).parts[-3])
    with open(breakhis_reference_dir / "BreaKHis_v1_counts.csv", newline="") as f:
        published = list(csv.DictReader(f))
    assert {row["subtype_code"] for row in published} == set(breakhis.SUBTYPES)
    for row in published:
        code = row["subtype_code"]
        assert breakhis.SUBTYPES[code] == (row["tissue"], row["subtype_dir"])
        for mag in breakhis.MAGNIFICATIONS:
            assert images[code, mag] == int(row[mag]), (code, mag)
        assert sum(images[code, m] for m in breakhis.MAGNIFICATIONS) == int(row["total"])
        # The published "patients" count slide folders; the conservative grouping merges some.
        assert len(slide_folders[code]) == int(row["patients"]), code
    per_tissue = Counter()
    for code, folders in slide_folders.items():
        per_tissue[breakhis.SUBTYPES[code][0]] += len(folders)
    assert per_tissue == {"benign": 24, "malignant": 58}


def test_listing_has_the_ten_shared_numeric_ids_of_the_readme(breakhis_listing):
    readme = {
        "14-22549": {("A", "22549AB"), ("A", "22549CD"), ("A", "22549G")},
        "14-29960": {("A", "29960CD"), ("F", "29960AB")},
        "14-14134": {("F", "14134"), ("F", "14134E")},
        "14-21998": {("F", "21998CD"), ("F", "21998EF"), ("PT", "21998AB")},
        "14-23060": {("F", "23060AB"), ("F", "23060CD")},
        "14-16184": {("TA", "16184"), ("TA", "16184CD")},
        "14-13412": {("DC", "13412"), ("LC", "13412")},
        "14-15570": {("LC", "15570"), ("LC", "15570C")},
        "14-18842": {("MC", "18842"), ("MC", "18842D")},
        "14-19979": {("MC", "19979"), ("MC", "19979C")},
    }
    folders = defaultdict(set)
    for _, r in breakhis_listing:
        folders[r.patient].add((r.subtype, r.slide))
    shared = {p: f for p, f in folders.items() if len(f) > 1}
    assert shared == readme


def test_parse_depends_only_on_the_tail_of_the_path(breakhis_listing):
    for line, rec in breakhis_listing[::500]:
        tail = "/".join(Path(line).parts[-6:])
        assert parse_path(tail) == rec
        assert parse_path("/data/somewhere/deep/" + line) == rec
        assert parse_path(Path("x") / line) == rec


def test_parse_fields():
    rec = parse_path("benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/SOB_B_A-14-22549AB-40-007.png")
    assert rec == breakhis.BreakHisRecord(tissue="benign", subtype="A", subtype_name="adenosis", year=2014,
                                          slide="22549AB", slide_id="14-22549AB", patient="14-22549",
                                          magnification="40X", seq=7)
    rec = parse_path("benign/SOB/fibroadenoma/SOB_B_F_14-14134/400X/SOB_B_F-14-14134-400-012.png")
    assert (rec.slide, rec.slide_id, rec.patient) == ("14134", "14-14134", "14-14134")


@pytest.mark.parametrize("old, new, reason", [
    ("malignant/SOB", "benign/SOB", "under 'benign'/"),
    ("/SOB/", "/XYZ/", "expected the folder 'SOB'"),
    ("ductal_carcinoma/", "lobular_carcinoma/", "under 'lobular_carcinoma'/"),
    ("SOB_M_DC_14-13412/", "SOB_M_DC_14-13413/", "slide folder is 'SOB_M_DC_14-13413'"),
    ("SOB_M_DC_14-13412/", "SOB_M_LC_14-13412/", "slide folder is 'SOB_M_LC_14-13412'"),
    ("SOB_M_DC_14-13412/", "slide13412/", "does not match SOB_<B|M>_<T>_<YY>-<slide>"),
    ("100X/", "200X/", "under '200X'/"),
    ("100X/", "100x/", "under '100x'/"),
    ("-100-001.png", "-100-001.jpg", "does not match"),
    ("-100-001.png", "-150-001.png", "not one of 40, 100, 200, 400"),
    ("SOB_M_DC-14", "SOB_B_DC-14", "contradicts subtype DC"),
    ("SOB_M_DC-14", "SOB_X_DC-14", "not B or M"),
    ("SOB_M_DC-14", "SOB_M_XX-14", "'XX' in the file name is not one of"),
    ("BreaKHis_v1/histology_slides/breast/malignant/SOB/", "", "only 4 component(s)"),
])
def test_inconsistent_paths_do_not_parse(old, new, reason):
    assert old in GOOD
    with pytest.raises(UnparsableName) as err:
        parse_path(GOOD.replace(old, new))
    assert reason in err.value.reason


def _tree(tmp_path) -> Path:
    breast = tmp_path / "dl" / "BreaKHis_v1" / "histology_slides" / "breast"
    for tissue in breakhis.TISSUES:
        (breast / tissue / "SOB").mkdir(parents=True)
    return breast


@pytest.mark.parametrize("given", ["dl", "dl/BreaKHis_v1", "dl/BreaKHis_v1/histology_slides",
                                   "dl/BreaKHis_v1/histology_slides/breast"])
def test_resolve_root_at_each_allowed_depth(tmp_path, given):
    breast = _tree(tmp_path)
    assert resolve_root(tmp_path / given) == breast
    assert resolve_root(str(tmp_path / given)) == breast


@pytest.mark.parametrize("inside", ["benign", "malignant/SOB"])
def test_resolve_root_inside_the_tree_names_the_breast_folder(tmp_path, inside):
    breast = _tree(tmp_path)
    with pytest.raises(UserError) as err:
        resolve_root(breast / inside)
    assert "inside the BreakHis tree" in str(err.value)
    assert str(breast.resolve()) in err.value.fix


def test_resolve_root_missing_says_what_and_where_to_get_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        resolve_root(missing)
    text = str(err.value)
    for expected in ("does not exist", str(missing), breakhis.LAYOUT, breakhis.DOWNLOAD_URL, "BreaKHis_v1.tar.gz"):
        assert expected in text


def test_resolve_root_empty_and_unrelated_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="the folder is empty"):
        resolve_root(tmp_path / "empty")
    other = tmp_path / "other"
    (other / "benign").mkdir(parents=True)  # half a dataset is not a dataset
    with pytest.raises(UserError, match="benign/ is there but malignant/ is not: the dataset is incomplete"):
        resolve_root(other)
    (other / "benign").rmdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"no benign/ and malignant/ folders .*found: notes.txt"):
        resolve_root(other)


def test_resolve_root_points_at_an_unextracted_archive(tmp_path):
    (tmp_path / "BreaKHis_v1.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(UserError) as err:
        resolve_root(tmp_path)
    assert "tar -xzf BreaKHis_v1.tar.gz" in err.value.fix
