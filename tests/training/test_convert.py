import json

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import shared_case
from tests.helpers import synthetic_head
from training.convert import convert_case, main
from training.datasets import LAYOUTS, discover, find_case


def test_layout_table_maps_both_real_archives_without_special_cases():
    deepmedic = find_case(shared_case("brats2015_deepmedic", "brats_2013_pat0003_1"), ["flair"])
    deepvox = find_case(shared_case("brats2018_deepvoxnet2", "case_2"), ["flair"])
    assert deepmedic.layout.name == "deepmedic-brats2015"
    assert deepmedic.files["flair"].name == "Flair_subtrMeanDivStd.nii.gz"
    assert deepvox.layout.name == "deepvoxnet2-brats2018"
    assert deepvox.label.name == "GT_W.nii.gz"


def test_standard_brats_names_are_found_by_glob(tmp_path):
    image, mask = synthetic_head()
    case = tmp_path / "BraTS20_Training_001"
    case.mkdir()
    sitk.WriteImage(image, str(case / "BraTS20_Training_001_flair.nii.gz"))
    sitk.WriteImage(mask, str(case / "BraTS20_Training_001_seg.nii.gz"))
    (found,) = discover([tmp_path], ["flair"])
    assert found.layout.name == "brats-standard"
    with pytest.raises(ValueError, match="matches no known layout"):
        find_case(case, ["t2"])  # the t2 file is not there
    assert {layout.name for layout in LAYOUTS} >= {"brats-standard"}


def test_convert_case_normalizes_over_the_brain_and_keeps_every_tumour_voxel():
    case = find_case(shared_case("brats2015_deepmedic", "brats_2013_pat0004_1"), ["flair"])
    shard = convert_case(case, ["flair"], "LPS", [1.0, 1.0, 1.0], "whole_tumour")
    image, label, brain = shard["image"], shard["label"], shard["brain"]
    assert image.dtype == np.float16 and image.shape[-1] == 1 and image.shape[:3] == label.shape
    values = image[..., 0][brain].astype(np.float32)
    assert abs(values.mean()) < 0.05 and 0.9 < values.std() < 1.1
    assert np.all(image[..., 0][~brain] == 0)
    # README of ../shared/data: 120674 tumour voxels (labels 1-4) in this case
    assert set(np.unique(label)) == {0, 1}
    assert int(label.sum()) == 120674


def test_convert_cli_writes_shards_and_an_index(tmp_path):
    root = shared_case("brats2018_deepvoxnet2")
    out = tmp_path / "shards"
    assert main([str(root / "case_2"), "--out", str(out), "--modalities", "flair"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [c["case_id"] for c in index["cases"]] == ["case_2"]
    assert index["cases"][0]["tumour_voxels"] == 37429  # GT_W voxel count in the data README
    with np.load(out / "case_2.npz") as z:
        assert z["image"].shape[1:] == (240, 240, 1)
    assert not list(out.glob("*.tmp.npz"))
