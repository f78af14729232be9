import pickle

import numpy
import pytest

from shmfuel.schemes import (
    BatchScheme,
    ConcatenatedScheme,
    ConstantScheme,
    SequentialExampleScheme,
    SequentialScheme,
    ShuffledExampleScheme,
    ShuffledScheme,
    cross_validation,
)


def test_constant_scheme():
    assert list(ConstantScheme(3, num_examples=7).get_request_iterator()) == [3, 3, 1]
    assert list(ConstantScheme(3, num_examples=6).get_request_iterator()) == [3, 3]
    assert list(ConstantScheme(2, times=3).get_request_iterator()) == [2, 2, 2]
    it = ConstantScheme(4).get_request_iterator()
    assert [next(it) for _ in range(100)] == [4] * 100
    assert not ConstantScheme(3).requests_examples


def test_constant_scheme_zero_is_empty_not_endless():
    assert list(ConstantScheme(3, num_examples=0).get_request_iterator()) == []
    assert list(ConstantScheme(3, times=0).get_request_iterator()) == []


def test_constant_scheme_bad_input():
    with pytest.raises(ValueError, match="not both"):
        ConstantScheme(3, num_examples=5, times=2)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        ConstantScheme(0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        ConstantScheme(2.5)
    with pytest.raises(ValueError, match="times must be a non-negative int, got True"):
        ConstantScheme(2, times=True)  # a bool is not a count
    assert len(list(ConstantScheme(2, times=numpy.int64(3)).get_request_iterator())) == 3


def test_sequential_scheme():
    scheme = SequentialScheme(5, 3)
    assert list(scheme.get_request_iterator()) == [[0, 1, 2], [3, 4]]
    assert list(scheme.get_request_iterator()) == [[0, 1, 2], [3, 4]]
    assert list(SequentialScheme([4, 2, 9], 2).get_request_iterator()) == [[4, 2], [9]]


def test_sequential_schemes_over_many_examples_make_no_list_of_them():
    # the requests walk the range: a mid-epoch iterator pickles small
    requests = SequentialScheme(10**6, 3).get_request_iterator()
    assert next(requests) == [0, 1, 2] and next(requests) == [3, 4, 5]
    resumed = pickle.loads(pickle.dumps(requests))  # mid-epoch, and small
    assert len(pickle.dumps(requests)) < 1000 and next(resumed) == [6, 7, 8]
    examples = SequentialExampleScheme(10**6).get_request_iterator()
    assert [next(examples) for _ in range(3)] == [0, 1, 2]
    assert len(pickle.dumps(examples)) < 1000


def test_shuffled_scheme_new_permutation_each_epoch():
    scheme = ShuffledScheme(10, 4, rng=numpy.random.RandomState(3))
    first = list(scheme.get_request_iterator())
    second = list(scheme.get_request_iterator())
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10))
    assert first != second
    sorted_scheme = ShuffledScheme(10, 4, sorted_indices=True)
    for batch in sorted_scheme.get_request_iterator():
        assert batch == sorted(batch)


def fuel_shuffle(indices, rng, size=None, sorted_indices=False):
    """Fuel's way: shuffle a list of the indices (and sort each batch)."""
    order = list(indices)
    rng.shuffle(order)
    if sorted_indices:
        order = [i for start in range(0, len(order), size)
                 for i in sorted(order[start:start + size])]
    return order


@pytest.mark.parametrize("examples", [1003, range(5, 3000, 3), list(range(40, 0, -1))])
@pytest.mark.parametrize("sorted_indices", [False, True])
def test_shuffled_schemes_make_fuels_batches_from_an_array(examples, sorted_indices):
    # a range of indices is shuffled as a numpy array (no list of millions
    # of ints), yet the batches, their Python ints and the generator's state
    # after each epoch are those of shuffling a list
    size, reference = 10, numpy.random.RandomState(5)
    indices = range(examples) if isinstance(examples, int) else examples
    scheme = ShuffledScheme(examples, size, rng=numpy.random.RandomState(5),
                            sorted_indices=sorted_indices)
    for _ in range(2):
        order = fuel_shuffle(indices, reference, size, sorted_indices)
        got = list(scheme.get_request_iterator())
        assert got == [order[i:i + size] for i in range(0, len(order), size)]
        assert {type(i) for batch in got for i in batch} == {int}
    assert scheme.rng.randint(1 << 30) == reference.randint(1 << 30)
    examples_scheme = ShuffledExampleScheme(examples, rng=numpy.random.RandomState(5))
    reference = numpy.random.RandomState(5)
    requests = examples_scheme.get_request_iterator()
    first = [next(requests) for _ in range(3)]
    resumed = pickle.loads(pickle.dumps(requests))  # mid-epoch
    assert first + list(resumed) == fuel_shuffle(indices, reference)
    assert {type(i) for i in first} == {int}


def test_a_shuffled_epoch_of_many_examples_makes_no_list_of_them():
    import tracemalloc
    tracemalloc.start()
    try:
        requests = ShuffledScheme(2 * 10**6, 256, sorted_indices=True).get_request_iterator()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(next(requests)) == 256
    assert peak < 40e6  # 16 MB of int64; a list of the ints takes 72 MB


def test_shuffled_scheme_default_seed_is_reproducible():
    a = list(ShuffledScheme(20, 5).get_request_iterator())
    b = list(ShuffledScheme(20, 5).get_request_iterator())
    assert a == b


def test_example_schemes():
    assert list(SequentialExampleScheme(3).get_request_iterator()) == [0, 1, 2]
    assert SequentialExampleScheme(3).requests_examples
    shuffled = list(ShuffledExampleScheme(6).get_request_iterator())
    assert sorted(shuffled) == list(range(6))


def test_bad_examples():
    with pytest.raises(ValueError, match="examples must be"):
        SequentialScheme("abc", 2)
    with pytest.raises(ValueError, match="must not be negative"):
        SequentialExampleScheme(-1)


def test_concatenated_scheme():
    scheme = ConcatenatedScheme([SequentialScheme(3, 2), SequentialScheme([7, 8], 2)])
    assert list(scheme.get_request_iterator()) == [[0, 1], [2], [7, 8]]
    assert not scheme.requests_examples
    with pytest.raises(ValueError, match="not a mix"):
        ConcatenatedScheme([SequentialScheme(3, 2), SequentialExampleScheme(3)])


def test_request_iterators_pickle_mid_epoch():
    scheme = ShuffledScheme(50, 7)
    it = scheme.get_request_iterator()
    next(it)
    clone = pickle.loads(pickle.dumps(it))
    assert list(clone) == list(it)
    chained = ConcatenatedScheme([SequentialScheme(3, 2), ConstantScheme(2, times=2)])
    it = chained.get_request_iterator()
    next(it)
    assert list(pickle.loads(pickle.dumps(it))) == [[2], 2, 2]


def test_cross_validation():
    folds = list(cross_validation(SequentialScheme, 6, 3, batch_size=10))
    assert len(folds) == 3
    train, valid = folds[1]
    assert list(valid.get_request_iterator()) == [[2, 3]]
    assert list(train.get_request_iterator()) == [[0, 1, 4, 5]]
    loose = list(cross_validation(SequentialExampleScheme, 7, 2, strict=False))
    assert [size for _, _, size in loose] == [3, 4]
    gen = cross_validation(SequentialScheme, 7, 2, batch_size=2)
    with pytest.raises(ValueError, match="not divisible"):
        next(gen)


def test_batch_scheme_keeps_indices():
    class Mine(BatchScheme):
        def get_request_iterator(self):
            return iter([list(self.indices)])
    assert list(Mine(3, 1).get_request_iterator()) == [[0, 1, 2]]
