"""The series rule table: which series of a study is which modality, and why the others are not used."""

from __future__ import annotations

import pytest

from app.errors import ApiError
from app.inputs.series_selection import SeriesInfo, describe_files, modalities_of, select_series
from tests.dicom_fixtures import epi_files, mprage_files

ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND")


def series(uid: str, description: str, instances: int = 160, number: int = 1, **kw) -> SeriesInfo:
    return SeriesInfo(
        uid=uid,
        modality=kw.get("modality", "MR"),
        description=description,
        protocol=kw.get("protocol", ""),
        image_type=kw.get("image_type", ORIGINAL),
        instances=instances,
        number=number,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("t1_MPRAGEcr_noGRAPPA", ["t1"]),
        ("Sag T1 MPRAGE", ["t1"]),
        ("AX T1 POST GAD", ["t1c"]),
        ("t1_mprage_gd", ["t1c"]),
        ("T1+C 3D", ["t1c"]),
        ("t2_tse_tra", ["t2"]),
        ("AX T2 FLAIR", ["flair"]),
        ("t2_tirm_tra_dark-fluid", ["flair"]),
        ("T1 FLAIR sag", ["t1"]),
        ("t2_swi_tra", []),
        ("AX T2* GRE", []),
        ("localizer", []),
        ("T1 MPR cor", []),
        ("ep2d_diff ADC", []),
    ],
)
def test_names_map_to_modalities(name, expected):
    assert modalities_of(series("1", name)) == expected


def test_a_typical_brain_study_gets_one_series_per_modality_and_reasons_for_the_rest():
    study = [
        series("1", "localizer", instances=3),
        series("2", "AX FLAIR", instances=40, number=2),
        series("3", "AX FLAIR", instances=40, number=7),  # repeated: the later one wins
        series("4", "AX T1 POST GAD", instances=176, number=8),
        series("5", "AX T1 POST GAD MPR", instances=176, number=9, image_type=("DERIVED", "SECONDARY")),
        series("6", "AX T1 pre", instances=176, number=5),
        series("7", "dose report", modality="SR", instances=1),
    ]
    selection = select_series(study, ["flair", "t1c", "t1"])
    assert {m: s.uid for m, s in selection.chosen.items()} == {"flair": "3", "t1c": "4", "t1": "6"}
    assert "fewer than 16" in selection.skipped["1"]
    assert "ranked higher" in selection.skipped["2"]
    assert "DERIVED" in selection.skipped["5"] and "not MR" in selection.skipped["7"]


def test_a_missing_modality_is_a_422_that_lists_what_was_seen():
    with pytest.raises(ApiError) as err:
        select_series([series("1", "AX T1 pre"), series("2", "localizer", instances=2)], ["flair"])
    assert err.value.status == 422 and err.value.code == "series_not_found"
    assert '"localizer"' in err.value.detail and "flair" in err.value.detail


def test_a_named_series_is_taken_whatever_its_name_for_a_one_modality_model():
    chosen = select_series([series("9", "anything at all")], ["t1"], named=True).chosen
    assert chosen["t1"].uid == "9"
    with pytest.raises(ApiError):  # but still not a derived or tiny series
        select_series([series("9", "x", instances=3)], ["t1"], named=True)


def test_headers_of_real_series_are_described_and_selected():
    described = describe_files([*mprage_files(), *epi_files()])
    assert len(described) == 2
    infos = {info.description: (info, paths) for info, paths in described.values()}
    mprage, paths = infos["t1_MPRAGEcr_noGRAPPA"]
    assert mprage.modality == "MR" and mprage.instances == len(paths) == 176 and mprage.image_type[0] == "ORIGINAL"
    selection = select_series([info for info, _ in described.values()], ["t1"])
    assert selection.chosen["t1"].uid == mprage.uid
