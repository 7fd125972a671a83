"""The bundled Minnesota radon data: faithful to its source, zero-based, ragged."""

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_qem.datasets
from pyro_qem import datasets

# The posteriordb export it was converted from, kept beside the clone (not shipped).
SOURCE = Path(__file__).parents[2].parent / "shared" / "data" / "radon_mn.json"

ARRAYS = {
    "log_radon": (np.float64, (919,)),
    "floor": (np.int8, (919,)),
    "log_uranium": (np.float64, (919,)),
    "county": (np.int64, (919,)),
    "county_log_uranium": (np.float64, (85,)),
}


@pytest.fixture(scope="module")
def raw():
    return datasets.load("radon_mn")


@pytest.fixture(scope="module")
def source():
    if not SOURCE.is_file():
        pytest.skip(f"source data not found at {SOURCE}")
    with SOURCE.open() as f:
        return json.load(f)


def test_stored_arrays_have_the_documented_dtypes_and_shapes(raw):
    assert set(raw) == set(ARRAYS)
    for name, (dtype, shape) in ARRAYS.items():
        assert raw[name].dtype == dtype and raw[name].shape == shape, name


def test_counts_and_zero_based_indices(raw):
    county = raw["county"]
    assert county.min() == 0 and county.max() == 84
    sizes = np.bincount(county, minlength=85)
    assert len(sizes) == 85 and sizes.sum() == 919
    assert sizes.min() == 1 and sizes.max() == 116
    assert set(np.unique(raw["floor"])) == {0, 1}


def test_county_uranium_is_one_value_per_county(raw):
    # Uranium is measured per county: every house of a county carries the same value, so
    # the (85,) array loses nothing and indexes back exactly.
    for j in range(85):
        values = raw["log_uranium"][raw["county"] == j]
        assert np.all(values == values[0]), j
    np.testing.assert_array_equal(raw["county_log_uranium"][raw["county"]], raw["log_uranium"])


def test_shipped_arrays_match_the_source(raw, source):
    data = source["data"]
    assert data["N"] == 919 and data["J"] == 85
    np.testing.assert_array_equal(raw["log_radon"], np.asarray(data["log_radon"], dtype=np.float64))
    np.testing.assert_array_equal(raw["floor"], np.asarray(data["floor_measure"]))
    uppm = np.asarray(data["log_uppm"], dtype=np.float64)
    np.testing.assert_array_equal(raw["log_uranium"], uppm)
    # The source counts counties from 1 (Stan's convention).
    np.testing.assert_array_equal(raw["county"], np.asarray(data["county_idx"]) - 1)
    # The source, too, has one uranium value per county.
    county = np.asarray(data["county_idx"]) - 1
    for j in range(85):
        assert np.unique(uppm[county == j]).size == 1, j


def test_module_docstring_keeps_the_source(source):
    assert source["source"].split("commit ")[-1] in pyro_qem.datasets.__doc__


def test_load_radon_mn_tensors():
    data = datasets.load_radon_mn()
    assert data["county"].dtype == torch.int64
    assert all(v.dtype == torch.float32 for k, v in data.items() if k != "county")
    assert datasets.load_radon_mn(torch.float64)["log_radon"].dtype == torch.float64
    torch.testing.assert_close(data["county_log_uranium"][data["county"]], data["log_uranium"])


def test_unknown_name_lists_radon_mn():
    with pytest.raises(ValueError, match="available: radon, radon_mn, bus_breakdown"):
        datasets.load("nope")
    with pytest.raises(ValueError, match="No bundled data set"):
        datasets.load("../radon")


def test_docstring_examples_run():
    result = doctest.testmod(pyro_qem.datasets)
    assert result.attempted > 0 and result.failed == 0
