import pickle

import numpy
import pytest

from shmfuel.utils import (
    Subset,
    do_not_pickle_attributes,
    find_in_data_path,
    iterable_fancy_indexing,
)


class TestSubset:
    def test_list_is_sorted_deduplicated_and_contiguous_becomes_slice(self):
        assert Subset([3, 1, 1, 2], 5).list_or_slice == slice(1, 4)
        assert Subset([4, 0, 2], 5).list_or_slice == [0, 2, 4]

    @pytest.mark.parametrize("bad", [[-1], [5], slice(-1, 2), slice(0, 6),
                                     slice(0, 4, 2), slice(5, None), slice(3, 2)])
    def test_construction_checks(self, bad):
        with pytest.raises(ValueError):
            Subset(bad, 5)

    def test_translation(self):
        sliced = Subset(slice(2, 8), 10)
        assert sliced[0] == 2
        assert sliced[[0, 5]] == [2, 7]
        assert sliced[slice(1, 3)] == slice(3, 5, 1)
        listed = Subset([1, 4, 7], 10)
        assert listed[1] == 4
        assert listed[[2, 0]] == [7, 1]
        assert listed[slice(0, 2)] == [1, 4]

    @pytest.mark.parametrize("request_", [[], [-1], [6], slice(0, 7),
                                          slice(6, 7), slice(3, 3)])
    def test_request_checks(self, request_):
        with pytest.raises(ValueError):
            Subset(slice(0, 6), 10)[request_]

    def test_num_examples_and_lists(self):
        assert Subset(slice(None, None), 7).num_examples == 7
        assert Subset([1, 3], 7).num_examples == 2
        assert Subset.empty_subset(4).is_empty
        assert Subset(slice(1, 3), 7).get_list_representation() == [1, 2]

    def test_add(self):
        assert (Subset(slice(0, 3), 10) + Subset(slice(3, 6), 10)).list_or_slice == slice(0, 6)
        assert (Subset([1], 10) + Subset([5], 10)).list_or_slice == [1, 5]
        with pytest.raises(ValueError, match="different original sizes"):
            Subset([1], 10) + Subset([1], 11)

    def test_subset_of(self):
        inner = Subset.subset_of(Subset(slice(2, 8), 10), slice(1, 3))
        assert inner.get_list_representation() == [3, 4]

    def test_index_within_subset(self):
        data = numpy.arange(10) * 10
        subset = Subset(slice(2, 8), 10)
        assert subset.index_within_subset(data, 1) == 30
        assert list(subset.index_within_subset(data, [3, 0])) == [50, 20]
        assert list(subset.index_within_subset(data, [3, 0], sort_indices=True)) == [50, 20]
        assert subset.index_within_subset(list(data), [3, 0]) == [50, 20]

    def test_sorted_fancy_indexing_restores_order(self):
        data = numpy.arange(20).reshape(10, 2)
        out = Subset.sorted_fancy_indexing(data, [7, 2, 5])
        numpy.testing.assert_array_equal(out, data[[7, 2, 5]])


def test_iterable_fancy_indexing():
    assert iterable_fancy_indexing(["a", "b", "c"], [2, 0]) == ["c", "a"]
    numpy.testing.assert_array_equal(
        iterable_fancy_indexing(numpy.array([1, 2, 3]), [2, 0]), [3, 1])


@do_not_pickle_attributes("heavy")
class Lazy:
    loads = 0

    def load(self):
        Lazy.loads += 1
        self.heavy = [1, 2, 3]


def test_do_not_pickle_attributes():
    obj = Lazy()
    assert obj.heavy == [1, 2, 3]
    state = obj.__getstate__()
    assert "_heavy" not in state
    copy = pickle.loads(pickle.dumps(obj))
    before = Lazy.loads
    assert copy.heavy == [1, 2, 3]
    assert Lazy.loads == before + 1


def test_do_not_pickle_attributes_needs_load():
    with pytest.raises(ValueError, match="must define load"):
        @do_not_pickle_attributes("x")
        class NoLoad:
            pass


def test_do_not_pickle_attributes_refuses_iterators():
    @do_not_pickle_attributes("it")
    class Holder:
        def load(self):
            self.it = iter([1])

    holder = Holder()
    holder.it
    with pytest.raises(ValueError, match="iterator"):
        pickle.dumps(holder)


def test_lazy_property_not_loaded():
    @do_not_pickle_attributes("x")
    class Forgetful:
        def load(self):
            pass

    with pytest.raises(ValueError, match="x wasn't loaded"):
        Forgetful().x


def test_find_in_data_path(tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f.txt").write_text("x")
    monkeypatch.setenv("SHMFUEL_DATA_PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert find_in_data_path("f.txt") == str(tmp_path / "b" / "f.txt")
    with pytest.raises(OSError, match="g.txt not found"):
        find_in_data_path("g.txt")
