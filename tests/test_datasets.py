import gzip
import pickle
from itertools import count

import numpy
import pytest

from shmfuel.datasets import (
    Dataset,
    IndexableDataset,
    IterableDataset,
    Spiral,
    SwissRoll,
    TextFile,
)
from shmfuel.schemes import SequentialExampleScheme
from shmfuel.streams import DataStream
from shmfuel.transformers import Cast, ScaleAndShift


def test_dataset_needs_provides_sources():
    class Empty(Dataset):
        def get_data(self, state=None, request=None):
            return ()
    with pytest.raises(ValueError, match="must set provides_sources"):
        Empty()


def test_source_selection():
    class Two(Dataset):
        provides_sources = ("a", "b")

        def get_data(self, state=None, request=None):
            return self.filter_sources((1, 2))
    assert Two(sources=("b",)).get_data() == (2,)
    with pytest.raises(ValueError, match="unable to provide requested sources"):
        Two(sources=("c",))
    with pytest.raises(ValueError, match="unable to provide"):
        Two(sources=())


def test_apply_default_transformers():
    class WithDefaults(IndexableDataset):
        default_transformers = ((ScaleAndShift, [2, 1], {}), (Cast, ["int64"], {}))
    dataset = WithDefaults({"x": numpy.array([1, 2, 3])})
    stream = DataStream.default_stream(
        dataset, iteration_scheme=SequentialExampleScheme(3))
    assert [int(x) for x, in stream.get_epoch_iterator()] == [3, 5, 7]


class TestIterableDataset:
    def test_dict_and_single(self):
        dataset = IterableDataset({"a": [1, 2], "b": [3, 4]})
        assert dataset.sources == ("a", "b")
        assert dataset.num_examples == 2
        assert list(DataStream(dataset).get_epoch_iterator()) == [(1, 3), (2, 4)]
        assert IterableDataset([5, 6]).sources == ("data",)

    def test_infinite_has_nan_length(self):
        assert numpy.isnan(IterableDataset(count()).num_examples)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="not iterable"):
            IterableDataset({"a": None})
        with pytest.raises(ValueError, match="different lengths"):
            IterableDataset({"a": [1], "b": [1, 2]})
        dataset = IterableDataset([1])
        with pytest.raises(ValueError, match="needs the state"):
            dataset.get_data(None)
        with pytest.raises(ValueError, match="no indexing"):
            dataset.get_data(dataset.open(), 3)

    def test_only_selected_sources(self):
        dataset = IterableDataset({"a": [1, 2], "b": [3, 4]}, sources=("b",))
        assert list(DataStream(dataset).get_epoch_iterator()) == [(3,), (4,)]


class TestIndexableDataset:
    def test_requests(self):
        dataset = IndexableDataset({"x": numpy.arange(10), "y": list("abcdefghij")})
        x, y = dataset.get_data(None, [3, 1])
        assert list(x) == [3, 1] and y == ["d", "b"]
        assert dataset.get_data(None, 2) == (2, "c")
        x, y = dataset.get_data(None, slice(1, 3))
        assert list(x) == [1, 2] and y == ["b", "c"]
        assert dataset.num_examples == 10
        assert list(dataset.x[:2]) == [0, 1]

    def test_lists_stay_lists(self):
        dataset = IndexableDataset({"features": [[0] * 3] * 5})
        batch, = dataset.get_data(None, [0, 1])
        assert batch == [[0, 0, 0], [0, 0, 0]]

    def test_start_stop_with_dict_works(self):
        dataset = IndexableDataset({"x": numpy.arange(10)}, start=3, stop=7)
        assert dataset.num_examples == 4
        assert list(dataset.get_data(None, [0, 3])[0]) == [3, 6]
        single = IndexableDataset(numpy.arange(10), start=8)
        assert single.num_examples == 2

    def test_bad_requests(self):
        dataset = IndexableDataset({"x": numpy.arange(4)})
        with pytest.raises(ValueError, match="empty list"):
            dataset.get_data(None, [])
        with pytest.raises(ValueError, match="out of range"):
            dataset.get_data(None, [4])
        with pytest.raises(ValueError, match="needs a request"):
            dataset.get_data(None, None)
        with pytest.raises(ValueError, match="has no state"):
            dataset.get_data(object(), 1)
        with pytest.raises(TypeError, match="a request is"):
            dataset.get_data(None, "a")
        with pytest.raises(ValueError, match="different lengths"):
            IndexableDataset({"a": [1], "b": [1, 2]})
        with pytest.raises(ValueError, match="not indexable"):
            IndexableDataset({"a": 3})

    def test_pickles(self):
        dataset = IndexableDataset({"x": numpy.arange(4)})
        clone = pickle.loads(pickle.dumps(dataset))
        assert list(clone.x) == [0, 1, 2, 3]
        with pytest.raises(AttributeError):
            clone.nope


class TestTextFile:
    dictionary = {"<S>": 0, "</S>": 1, "<UNK>": 2, "hello": 3, "world": 4,
                  "h": 5, "i": 6}

    def write(self, tmp_path):
        first = tmp_path / "a.txt"
        first.write_text("hello world\nhello there\n")
        second = tmp_path / "b.txt.gz"
        with gzip.open(second, "wt") as f:
            f.write("HI\n")
        return [str(first), str(second)]

    def test_words_unknown_and_gzip(self, tmp_path):
        files = self.write(tmp_path)
        dataset = TextFile(files, self.dictionary)
        data = [s for s, in DataStream(dataset).get_epoch_iterator()]
        assert data == [[0, 3, 4, 1], [0, 3, 2, 1], [0, 2, 1]]

    def test_characters_and_preprocess(self, tmp_path):
        files = self.write(tmp_path)[1:]
        dataset = TextFile(files, self.dictionary, bos_token=None,
                           level="character", preprocess=str.lower)
        assert [s for s, in DataStream(dataset).get_epoch_iterator()] == [[5, 6, 1]]

    def test_no_unk_raises(self, tmp_path):
        dataset = TextFile(self.write(tmp_path), self.dictionary, unk_token=None)
        stream = DataStream(dataset)
        it = stream.get_epoch_iterator()
        next(it)
        with pytest.raises(KeyError, match="'there'"):
            next(it)
        stream.close()

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="bos_token"):
            TextFile([], {"</S>": 1, "<UNK>": 2})
        with pytest.raises(ValueError, match="level must be"):
            TextFile([], self.dictionary, level="byte")

    def test_mid_epoch_pickle_resumes(self, tmp_path):
        stream = DataStream(TextFile(self.write(tmp_path), self.dictionary))
        it = stream.get_epoch_iterator()
        next(it)
        clone = pickle.loads(pickle.dumps(it))
        assert list(clone) == list(it) == [([0, 3, 2, 1],), ([0, 2, 1],)]


def test_toy_datasets():
    spiral = Spiral(num_examples=50, classes=3, cycles=2, seed=4)
    features, position, label = spiral.get_data(None, slice(0, 50))
    assert features.shape == (50, 2) and features.dtype == numpy.float32
    assert ((0 <= position) & (position < 2)).all()
    assert set(label) <= {0, 1, 2}
    again = Spiral(num_examples=50, classes=3, cycles=2, seed=4)
    numpy.testing.assert_array_equal(again.get_data(None, slice(0, 50))[0], features)
    roll = SwissRoll(num_examples=20, noise=0.1)
    features, position = roll.get_data(None, slice(0, 20))
    assert features.shape == (20, 3) and position.shape == (20, 2)
    assert roll.sources == ("features", "position")


def test_example_stream_and_missing_scheme():
    dataset = IndexableDataset({"x": numpy.arange(3)})
    assert [int(x) for x, in dataset.get_example_stream().get_epoch_iterator()] == [0, 1, 2]

    class NoScheme(Dataset):
        provides_sources = ("x",)

        def get_data(self, state=None, request=None):
            return (1,)
    with pytest.raises(AttributeError, match="no example iteration scheme"):
        NoScheme().example_iteration_scheme
