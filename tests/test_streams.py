import pickle

import numpy
import pytest

from shmfuel.datasets import IndexableDataset, IterableDataset
from shmfuel.iterator import DataIterator
from shmfuel.schemes import SequentialScheme, ShuffledScheme
from shmfuel.streams import AbstractDataStream, DataStream
from shmfuel.transformers import Filter, Mapping


def module_level_predicate(data):
    return data[0][0] % 2 == 0


def test_data_stream_epochs_and_as_dict():
    dataset = IndexableDataset({"x": numpy.arange(5), "y": list("abcde")})
    stream = DataStream(dataset, iteration_scheme=SequentialScheme(5, 2))
    assert not stream.produces_examples
    batches = list(stream.get_epoch_iterator(as_dict=True))
    assert [list(b["x"]) for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[0]["y"] == ["a", "b"]
    epochs = stream.iterate_epochs()
    assert len(list(next(epochs))) == 3
    assert len(list(next(epochs))) == 3


def test_stream_without_scheme_produces_examples():
    stream = DataStream(IterableDataset([1, 2, 3]))
    assert stream.produces_examples
    assert list(stream.get_epoch_iterator()) == [(1,), (2,), (3,)]
    # Every epoch but the first after construction/reset moves on.
    assert list(stream.get_epoch_iterator()) == [(1,), (2,), (3,)]
    stream.reset()
    assert list(stream.get_epoch_iterator()) == [(1,), (2,), (3,)]
    with pytest.raises(ValueError, match="cannot be set"):
        stream.produces_examples = False


def test_axis_labels_strip_batch_without_mutating_caller():
    labels = {"x": ("batch", "feature")}
    dataset = IndexableDataset({"x": numpy.zeros((4, 2))}, axis_labels=labels)
    example_stream = DataStream(dataset, iteration_scheme=dataset.example_iteration_scheme)
    assert example_stream.axis_labels == {"x": ("feature",)}
    assert labels == {"x": ("batch", "feature")}
    assert dataset.axis_labels == {"x": ("batch", "feature")}
    batch_stream = DataStream(dataset, iteration_scheme=SequentialScheme(4, 2))
    assert batch_stream.axis_labels == {"x": ("batch", "feature")}


def test_abstract_stream_produces_examples_rules():
    class Bare(AbstractDataStream):
        sources = ("a",)

        def get_epoch_iterator(self, **kwargs):
            return super().get_epoch_iterator(**kwargs)
    bare = Bare()
    with pytest.raises(ValueError, match="cannot infer type of stream"):
        bare.produces_examples
    bare.produces_examples = False
    assert bare.produces_examples is False
    schemed = Bare(iteration_scheme=SequentialScheme(3, 1))
    with pytest.raises(ValueError, match="iteration scheme is given"):
        schemed.produces_examples = True
    with pytest.raises(NotImplementedError):
        bare.get_data()


def test_as_dict_with_wrong_arity_is_an_error():
    class Broken(AbstractDataStream):
        sources = ("a", "b")

        def get_data(self, request=None):
            return (1,)

        def get_epoch_iterator(self, **kwargs):
            return super().get_epoch_iterator(**kwargs)
    with pytest.raises(ValueError, match="returned 1 items but has 2 sources"):
        next(Broken().get_epoch_iterator(as_dict=True))


def test_mid_epoch_iterator_pickles_and_resumes_exactly():
    dataset = IndexableDataset({"x": numpy.arange(100)})
    stream = Filter(Mapping(DataStream(dataset, iteration_scheme=ShuffledScheme(100, 10)),
                            numpy_abs), module_level_predicate)
    it = stream.get_epoch_iterator()
    next(it)
    next(it)
    clone = pickle.loads(pickle.dumps(it))
    rest, clone_rest = list(it), list(clone)
    assert len(rest) > 0
    assert [list(b[0]) for b in clone_rest] == [list(b[0]) for b in rest]


def numpy_abs(data):
    return (numpy.abs(data[0]),)


def test_data_iterator_without_requests():
    class Counter(AbstractDataStream):
        sources = ("n",)

        def __init__(self):
            super().__init__()
            self.left = 2

        def get_data(self, request=None):
            if not self.left:
                raise StopIteration
            self.left -= 1
            return (self.left,)

        def get_epoch_iterator(self, **kwargs):
            return super().get_epoch_iterator(**kwargs)
    assert list(DataIterator(Counter())) == [(1,), (0,)]


@pytest.mark.parametrize("scheme", [5, SequentialScheme, "sequential"])
def test_an_iteration_scheme_that_is_not_one_is_refused_at_once(scheme):
    with pytest.raises(TypeError, match="iteration_scheme must be an iteration "
                                        "scheme object, such as SequentialScheme"):
        DataStream(IndexableDataset([1, 2]), iteration_scheme=scheme)
