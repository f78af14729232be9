"""Datasets that live on disk: H5PYDataset and NpyDataset."""

import pickle

import numpy
import pytest
from helpers import as_lists

from shmfuel import Prefetcher
from shmfuel.datasets import NpyDataset
from shmfuel.schemes import SequentialScheme, ShuffledScheme
from shmfuel.streams import DataStream

h5py = pytest.importorskip("h5py")

from shmfuel.converters import fill_hdf5_file, to_hdf5  # noqa: E402
from shmfuel.datasets import H5PYDataset  # noqa: E402

pytestmark = pytest.mark.timeout(60)

X = numpy.arange(40, dtype="float32").reshape(20, 2)
Y = numpy.arange(20) % 3
SEQ = [numpy.arange(i % 4 + 1) * 10 + i for i in range(20)]


@pytest.fixture
def h5path(tmp_path):
    return to_hdf5(tmp_path / "data.hdf5", {
        "train": {"x": X[:15], "y": Y[:15], "seq": SEQ[:15]},
        "test": {"x": X[15:], "y": Y[15:], "seq": SEQ[15:]},
    }, axis_labels={"x": ("batch", "feature"), "y": ("batch",)},
        comments={"test": "held out"})


def read(dataset, request):
    state = dataset.open()
    try:
        return dataset.get_data(state, request)
    finally:
        dataset.close(state)


class TestH5PYDataset:
    @pytest.mark.parametrize("load_in_memory", [False, True])
    def test_int_slice_and_list_requests(self, h5path, load_in_memory):
        dataset = H5PYDataset(h5path, which_sets=("train",), load_in_memory=load_in_memory)
        assert dataset.sources == ("x", "y", "seq") and dataset.num_examples == 15
        x, y, seq = read(dataset, 3)
        assert list(x) == [6, 7] and y == 0 and list(seq) == list(SEQ[3])
        x, y, seq = read(dataset, slice(2, 5))
        numpy.testing.assert_array_equal(x, X[2:5])
        x, y, seq = read(dataset, [7, 1, 4])
        numpy.testing.assert_array_equal(x, X[[7, 1, 4]])
        numpy.testing.assert_array_equal(y, Y[[7, 1, 4]])
        assert seq.dtype == object and [list(s) for s in seq] == [list(SEQ[i]) for i in (7, 1, 4)]

    def test_unsorted_requests_without_sort_indices_are_refused_by_h5py(self, h5path):
        dataset = H5PYDataset(h5path, which_sets=("train",), sort_indices=False,
                              sources=("x",))
        numpy.testing.assert_array_equal(read(dataset, [1, 4])[0], X[[1, 4]])
        with pytest.raises(TypeError):
            read(dataset, [4, 1])

    def test_union_of_splits_and_subset(self, h5path):
        dataset = H5PYDataset(h5path, which_sets=("train", "test"), subset=slice(13, 17))
        assert dataset.num_examples == 4
        numpy.testing.assert_array_equal(read(dataset, slice(0, 4))[0], X[13:17])
        listed = H5PYDataset(h5path, which_sets=("test",), subset=[4, 0])
        numpy.testing.assert_array_equal(read(listed, [0, 1])[0], X[[15, 19]])

    def test_metadata(self, h5path):
        dataset = H5PYDataset(h5path, which_sets=("test",), sources=("seq", "x"))
        assert dataset.axis_labels == {"x": ("batch", "feature")}
        seq, x = read(dataset, [0])
        assert x.shape == (1, 2) and list(seq[0]) == list(SEQ[15])
        with h5py.File(h5path, "r") as h5file:
            assert H5PYDataset.get_all_splits(h5file) == ("train", "test")
            assert H5PYDataset.get_all_sources(h5file) == ("x", "y", "seq")
            assert H5PYDataset.get_vlen_sources(h5file) == ("seq",)
            comments = {r["split"]: r["comment"] for r in h5file.attrs["split"]}
            assert comments[b"test"] == b"held out"

    def test_file_handles_are_shared_and_counted(self, h5path):
        from shmfuel.datasets.hdf5 import _Handles
        dataset = H5PYDataset(h5path, which_sets=("train",))
        first, second = dataset.open(), dataset.open()
        assert first.handle is second.handle
        dataset.close(first)
        assert read(dataset, 0)[1] == 0
        assert bool(second.handle)
        dataset.close(second)
        assert not any(key[0] == h5path for key in _Handles.files)

    def test_pickles_by_path_mid_epoch(self, h5path):
        dataset = H5PYDataset(h5path, which_sets=("train",), sources=("x", "y"))
        stream = DataStream(dataset, iteration_scheme=SequentialScheme(15, 4))
        it = stream.get_epoch_iterator()
        next(it)
        payload = pickle.dumps(it)
        assert len(payload) < 5000
        clone = pickle.loads(payload)
        assert as_lists(clone) == as_lists(it)
        stream.close()
        clone.data_stream.close()

    def test_under_a_prefetcher_with_two_workers(self, h5path):
        def make():
            dataset = H5PYDataset(h5path, which_sets=("train", "test"), sources=("x", "y"))
            return DataStream(dataset, iteration_scheme=ShuffledScheme(
                20, 3, rng=numpy.random.RandomState(1)))
        serial = make()
        expected = [as_lists(serial.get_epoch_iterator()) for _ in range(2)]
        serial.close()
        with Prefetcher(make(), workers=2, hwm=4, start_method="fork") as stream:
            assert [as_lists(stream.get_epoch_iterator()) for _ in range(2)] == expected

    def test_bad_input(self, h5path, tmp_path):
        with pytest.raises(FileNotFoundError, match="no HDF5 file"):
            H5PYDataset(tmp_path / "missing.hdf5", which_sets=("train",))
        numpy.save(tmp_path / "x.npy", numpy.arange(3))
        with pytest.raises(OSError, match="x.npy is not an HDF5 file.*to_hdf5.*NpyDataset"):
            H5PYDataset(tmp_path / "x.npy", which_sets=("train",))
        with pytest.raises(ValueError, match=r"which_sets must be a tuple .*\('train',\)"):
            H5PYDataset(h5path, which_sets="train")
        with pytest.raises(ValueError, match=r"no split\(s\) \['valid'\]"):
            H5PYDataset(h5path, which_sets=("valid",))
        with pytest.raises(ValueError, match="unable to provide requested sources"):
            H5PYDataset(h5path, which_sets=("train",), sources=("z",))
        with pytest.raises(TypeError, match="path or an h5py.File"):
            H5PYDataset(3, which_sets=("train",))
        dataset = H5PYDataset(h5path, which_sets=("train",))
        with pytest.raises(TypeError, match="a request is"):
            read(dataset, "0")
        with pytest.raises(ValueError, match="needs a request"):
            read(dataset, None)
        with pytest.raises(ValueError, match="out of range"):
            read(dataset, [15])
        with pytest.raises(ValueError, match="state made by open"):
            dataset.get_data(None, 0)
        plain = tmp_path / "plain.hdf5"
        with h5py.File(plain, "w") as f:
            f["x"] = X
        with pytest.raises(ValueError, match="no 'split' attribute"):
            H5PYDataset(plain, which_sets=("train",))

    def test_create_split_array_and_fill(self, tmp_path):
        path = tmp_path / "manual.hdf5"
        with h5py.File(path, "w") as h5file:
            fill_hdf5_file(h5file, (("a", "v", numpy.ones((3, 2)), ""),
                                    ("b", "v", numpy.zeros((2, 2)), "two")))
            rows = h5file.attrs["split"]
            assert [(r["split"], r["start"], r["stop"]) for r in rows] == [
                (b"a", 0, 3), (b"b", 3, 5)]
        assert read(H5PYDataset(path, which_sets=("b",)), 0)[0].tolist() == [0, 0]
        with h5py.File(tmp_path / "bad.hdf5", "w") as h5file:
            with pytest.raises(ValueError, match="examples of different shapes"):
                fill_hdf5_file(h5file, (("a", "v", numpy.ones((3, 2)), ""),
                                        ("b", "v", numpy.ones((3, 4)), "")))
        with pytest.raises(ValueError, match="same sources"):
            to_hdf5(tmp_path / "c.hdf5", {"a": {"x": X}, "b": {"y": Y}})


@pytest.fixture
def npy_paths(tmp_path):
    numpy.save(tmp_path / "x.npy", X)
    numpy.save(tmp_path / "y.npy", Y)
    return {"x": tmp_path / "x.npy", "y": str(tmp_path / "y.npy")}


class TestNpyDataset:
    def test_requests_return_plain_arrays(self, npy_paths):
        dataset = NpyDataset(npy_paths)
        assert dataset.num_examples == 20 and dataset.sources == ("x", "y")
        x, y = dataset.get_data(None, slice(2, 4))
        assert type(x) is numpy.ndarray and not x.flags.owndata
        numpy.testing.assert_array_equal(x, X[2:4])
        x, y = dataset.get_data(None, [5, 1])
        numpy.testing.assert_array_equal(y, Y[[5, 1]])
        assert isinstance(dataset.x, numpy.memmap)

    def test_start_stop_and_pickling_by_path(self, npy_paths):
        dataset = NpyDataset(npy_paths, start=10, stop=14)
        payload = pickle.dumps(dataset)
        assert b"x.npy" in payload and X[10:14].tobytes() not in payload
        clone = pickle.loads(payload)
        assert clone.num_examples == 4
        numpy.testing.assert_array_equal(clone.get_data(None, [0, 3])[0], X[[10, 13]])

    def test_under_a_prefetcher_with_two_workers(self, npy_paths):
        def make():
            return DataStream(NpyDataset(npy_paths), iteration_scheme=ShuffledScheme(
                20, 3, rng=numpy.random.RandomState(2)))
        serial = make()
        expected = [as_lists(serial.get_epoch_iterator()) for _ in range(2)]
        with Prefetcher(make(), workers=2, hwm=4) as stream:
            assert [as_lists(stream.get_epoch_iterator()) for _ in range(2)] == expected

    def test_bad_input(self, npy_paths, tmp_path):
        with pytest.raises(FileNotFoundError, match="source 'z': no file"):
            NpyDataset({"z": tmp_path / "nope.npy"})
        with pytest.raises(TypeError, match="non-empty dict"):
            NpyDataset([npy_paths["x"]])
        numpy.save(tmp_path / "short.npy", Y[:5])
        with pytest.raises(ValueError, match="different lengths"):
            NpyDataset({"x": npy_paths["x"], "short": tmp_path / "short.npy"})
        numpy.save(tmp_path / "scalar.npy", numpy.float32(1))
        with pytest.raises(ValueError, match="holds a scalar"):
            NpyDataset({"s": tmp_path / "scalar.npy"})
        numpy.save(tmp_path / "objects.npy", numpy.array([[1], [1, 2]], dtype=object))
        with pytest.raises(ValueError, match="not a plain .npy array"):
            NpyDataset({"o": tmp_path / "objects.npy"})
