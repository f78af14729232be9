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
