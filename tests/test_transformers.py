import logging
import os
import pickle

import numpy
import pytest

from shmfuel import config
from shmfuel.datasets import IndexableDataset, IterableDataset
from shmfuel.exceptions import AxisLabelsMismatchError
from shmfuel.schemes import ConstantScheme, SequentialExampleScheme, SequentialScheme
from shmfuel.streams import DataStream
from shmfuel.transformers import (
    AgnosticTransformer,
    Batch,
    Cache,
    Cast,
    ExpectsAxisLabels,
    Filter,
    FilterSources,
    Flatten,
    ForceFloatX,
    Mapping,
    Merge,
    MultiProcessing,
    Padding,
    Rename,
    ScaleAndShift,
    SortMapping,
    Transformer,
    Unpack,
)
from shmfuel.transformers.defaults import ToBytes, uint8_pixels_to_floatX
from shmfuel.transformers.sequences import NGrams, Window


def example_stream(**sources):
    return DataStream(IterableDataset(sources))


def batch_stream(batch_size=2, labels=None, **sources):
    dataset = IndexableDataset(sources, axis_labels=labels)
    n = dataset.num_examples
    return DataStream(dataset, iteration_scheme=SequentialScheme(n, batch_size))


def values(stream, **kwargs):
    return list(stream.get_epoch_iterator(**kwargs))


class TestMapping:
    def test_replace_and_add_sources(self):
        stream = example_stream(x=[1, 2])
        assert values(Mapping(stream, lambda d: (d[0] * 10,))) == [(10,), (20,)]
        added = Mapping(example_stream(x=[1, 2]), lambda d: (d[0] + 1,), add_sources=("y",))
        assert added.sources == ("x", "y")
        assert values(added) == [(1, 2), (2, 3)]

    def test_a_mapping_must_return_a_tuple_not_an_array_split_into_sources(self):
        # two sources and a 2-row array: tuple() would have made the rows
        # the sources, silently
        stream = batch_stream(x=numpy.arange(4), y=numpy.arange(4))
        with pytest.raises(TypeError, match="returned a ndarray; it must return a "
                                            "tuple with one value per source"):
            values(Mapping(stream, lambda d: d[0] * 2))
        lists = Mapping(batch_stream(x=numpy.arange(4), y=numpy.arange(4)),
                        lambda d: [d[1], d[0]])
        assert [(list(a), list(b)) for a, b in values(lists)] == [([0, 1], [0, 1]),
                                                                 ([2, 3], [2, 3])]

    def test_dict_mapping(self):
        stream = example_stream(x=[1, 2], y=[3, 4])
        mapped = Mapping(stream, lambda d: {"x": d["y"], "y": d["x"]}, mapping_accepts=dict)
        assert values(mapped) == [(3, 1), (4, 2)]
        missing = Mapping(example_stream(x=[1]), lambda d: {}, mapping_accepts=dict)
        with pytest.raises(KeyError, match="no value for sources"):
            values(missing)
        not_a_dict = Mapping(example_stream(x=[1]), lambda d: (d["x"],),
                             mapping_accepts=dict)
        with pytest.raises(TypeError, match="returned a tuple; with mapping_accepts="
                                            "dict it must return a dict"):
            values(not_a_dict)

    def test_stop_iteration_in_user_code_is_an_error(self):
        def broken(data):
            raise StopIteration
        with pytest.raises(RuntimeError, match="raised StopIteration"):
            values(Mapping(example_stream(x=[1, 2]), broken))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="mapping_accepts must be list or dict"):
            Mapping(example_stream(x=[1]), abs, mapping_accepts=tuple)
        with pytest.raises(TypeError, match="callable"):
            Mapping(example_stream(x=[1]), 3)

    def test_labels_are_kept(self):
        stream = batch_stream(x=numpy.zeros((4, 2)), labels={"x": ("batch", "f")})
        assert Mapping(stream, lambda d: d).axis_labels == {"x": ("batch", "f")}


def test_sort_mapping():
    stream = batch_stream(batch_size=3, x=numpy.array([3, 1, 2]), y=["c", "a", "b"])
    out = values(Mapping(stream, SortMapping(lambda example: example[0])))
    x, y = out[0]
    assert list(x) == [1, 2, 3] and isinstance(x, numpy.ndarray)
    assert y == ["a", "b", "c"]


class TestSourcewise:
    def test_flatten(self):
        stream = batch_stream(x=numpy.ones((4, 2, 3)), labels={"x": ("batch", "a", "b")})
        flat = Flatten(stream)
        assert flat.axis_labels == {"x": ("batch", "feature")}
        assert values(flat)[0][0].shape == (2, 6)
        examples = Flatten(example_stream(x=[numpy.ones((2, 2))]))
        assert values(examples)[0][0].shape == (4,)

    def test_scale_shift_and_cast(self):
        stream = batch_stream(x=numpy.array([0, 255]), y=numpy.array([1, 2]))
        scaled = ScaleAndShift(stream, 2, 1, which_sources=("x",))
        x, y = values(scaled)[0]
        assert list(x) == [1, 511] and list(y) == [1, 2]
        cast = Cast(batch_stream(x=numpy.array([1.5, 2.5])), "int32")
        assert values(cast)[0][0].dtype == numpy.int32
        floatx = Cast(batch_stream(x=numpy.array([1, 2])), "floatX")
        assert values(floatx)[0][0].dtype == numpy.dtype(config.floatX)

    def test_force_floatx(self):
        stream = batch_stream(x=numpy.array([1.0, 2.0]), y=numpy.array([1, 2]), z=["a", "b"])
        x, y, z = values(ForceFloatX(stream))[0]
        assert x.dtype == numpy.dtype(config.floatX)
        assert y.dtype.kind == "i" and z == ["a", "b"]

    def test_unknown_which_sources(self):
        with pytest.raises(ValueError, match="which_sources names"):
            ScaleAndShift(batch_stream(x=numpy.ones(2)), 1, 0, which_sources=("nope",))

    def test_uint8_defaults(self):
        (scale, args, kwargs), (cast, cast_args, _) = uint8_pixels_to_floatX(("x",))
        assert scale is ScaleAndShift and args == [1 / 255.0, 0] and cast is Cast
        assert kwargs == {"which_sources": ("x",)} and cast_args == ["floatX"]

    def test_to_bytes(self):
        data = numpy.arange(6, dtype=numpy.uint8).reshape(3, 2)
        assert values(ToBytes(example_stream(x=list(data))))[0] == (b"\x00\x01",)
        stream = batch_stream(x=data, labels={"x": ("batch", "f")})
        tobytes = ToBytes(stream)
        assert tobytes.axis_labels == {"x": ("batch", "bytes")}
        assert values(tobytes)[0] == ([b"\x00\x01", b"\x02\x03"],)


class TestFilter:
    def test_keeps_matching_and_honours_as_dict(self):
        stream = Filter(example_stream(x=[1, 2, 3, 4]), lambda d: d[0] % 2 == 0)
        assert values(stream) == [(2,), (4,)]
        assert values(stream, as_dict=True) == [{"x": 2}, {"x": 4}]

    def test_stop_iteration_in_predicate(self):
        def predicate(data):
            raise StopIteration
        with pytest.raises(RuntimeError, match="StopIteration"):
            values(Filter(example_stream(x=[1]), predicate))


class TestBatch:
    def test_batches_and_labels(self):
        dataset = IndexableDataset({"x": numpy.arange(5)}, axis_labels={"x": ("batch",)})
        stream = DataStream(dataset, iteration_scheme=dataset.example_iteration_scheme)
        batched = Batch(stream, ConstantScheme(2))
        assert [list(b[0]) for b in values(batched)] == [[0, 1], [2, 3], [4]]
        assert batched.axis_labels == {"x": ("batch",)}
        assert not batched.produces_examples

    def test_strictness(self):
        def run(strictness):
            return values(Batch(example_stream(x=[1, 2, 3]), ConstantScheme(2), strictness))
        assert len(run(0)) == 2
        assert len(run(1)) == 1
        with pytest.raises(ValueError, match="ran out after 1 of the 2"):
            run(2)

    def test_ragged_examples_become_object_array(self):
        stream = Batch(example_stream(x=[[1], [2, 3], [4, 5, 6]]), ConstantScheme(3))
        batch, = values(stream)[0]
        assert batch.dtype == object and batch.shape == (3,)
        assert list(batch) == [[1], [2, 3], [4, 5, 6]]

    def test_bad_input(self):
        with pytest.raises(ValueError, match="must produce examples"):
            Batch(batch_stream(x=numpy.ones(2)), ConstantScheme(2))
        with pytest.raises(ValueError, match="must request batches"):
            Batch(example_stream(x=[1]), SequentialExampleScheme(1))
        with pytest.raises(ValueError, match="strictness must be"):
            Batch(example_stream(x=[1]), ConstantScheme(1), strictness=3)
        batched = Batch(example_stream(x=[1]), ConstantScheme(1))
        batched.get_epoch_iterator()
        with pytest.raises(ValueError, match="needs a request"):
            batched.get_data(None)


class TestCache:
    def test_rebatches_across_child_batches(self):
        stream = batch_stream(batch_size=2, x=numpy.arange(7))
        cached = Cache(stream, ConstantScheme(3))
        assert [list(b[0]) for b in values(cached)] == [[0, 1, 2], [3, 4, 5], [6]]
        # The cache is emptied at each new epoch.
        assert [list(b[0]) for b in values(cached)] == [[0, 1, 2], [3, 4, 5], [6]]

    def test_bad_input(self):
        with pytest.raises(ValueError, match="needs a BatchSizeScheme"):
            Cache(batch_stream(x=numpy.ones(2)), SequentialScheme(2, 1))
        with pytest.raises(ValueError, match="must produce batches"):
            Cache(example_stream(x=[1]), ConstantScheme(1))


def test_unpack():
    stream = batch_stream(batch_size=2, x=numpy.arange(3), labels={"x": ("batch",)})
    unpacked = Unpack(stream)
    assert unpacked.produces_examples and unpacked.axis_labels == {"x": ()}
    assert [int(x) for x, in values(unpacked)] == [0, 1, 2]
    with pytest.raises(ValueError, match="must produce batches"):
        Unpack(example_stream(x=[1]))


class TestPadding:
    def test_ragged_batch_is_padded_with_mask(self):
        examples = example_stream(x=[[1], [2, 3], [4, 5, 6]], y=[0, 1, 2])
        padded = Padding(Batch(examples, ConstantScheme(3)), mask_sources=("x",))
        assert padded.sources == ("x", "x_mask", "y")
        x, mask, y = values(padded)[0]
        numpy.testing.assert_array_equal(x, [[1, 0, 0], [2, 3, 0], [4, 5, 6]])
        numpy.testing.assert_array_equal(mask, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
        assert mask.dtype == numpy.dtype(config.floatX)
        assert list(y) == [0, 1, 2]

    def test_trailing_dims_and_mask_dtype(self):
        examples = example_stream(x=[numpy.ones((1, 2)), numpy.ones((2, 2))])
        x, mask = values(Padding(Batch(examples, ConstantScheme(2)), mask_dtype="int8"))[0]
        assert x.shape == (2, 2, 2) and mask.dtype == numpy.int8
        bad = example_stream(x=[numpy.ones((1, 2)), numpy.ones((2, 3))])
        with pytest.raises(ValueError, match="other than the first differ"):
            values(Padding(Batch(bad, ConstantScheme(2))))

    def test_bad_input(self):
        with pytest.raises(ValueError, match="must produce batches"):
            Padding(example_stream(x=[[1]]))
        with pytest.raises(ValueError, match="mask_sources"):
            Padding(batch_stream(x=numpy.ones(2)), mask_sources=("y",))


class TestMerge:
    def test_zips_streams(self):
        merged = Merge([example_stream(a=[1, 2]), example_stream(b=[3, 4])], ("a", "b"))
        assert values(merged) == [(1, 3), (2, 4)]
        assert merged.produces_examples

    def test_different_lengths_are_an_error_unless_not_strict(self):
        def make(strict):
            return Merge([example_stream(a=[1, 2]), example_stream(b=[3])], ("a", "b"),
                         strict=strict)
        with pytest.raises(ValueError, match="ended before the others"):
            values(make(True))
        assert values(make(False)) == [(1, 3)]

    def test_bad_input(self):
        with pytest.raises(ValueError, match="wrong number of sources"):
            Merge([example_stream(a=[1])], ("a", "b"))
        with pytest.raises(ValueError, match="same type of output"):
            Merge([example_stream(a=[1]), batch_stream(b=numpy.ones(2))], ("a", "b"))


class TestRename:
    def test_rename_and_swap(self):
        stream = batch_stream(x=numpy.ones(2), y=numpy.zeros(2), labels={"x": ("batch",)})
        renamed = Rename(stream, {"x": "features"})
        assert renamed.sources == ("features", "y")
        assert renamed.axis_labels == {"features": ("batch",)}
        assert Rename(stream, {"x": "y", "y": "x"}).sources == ("y", "x")

    def test_errors(self, caplog):
        stream = example_stream(x=[1], y=[2])
        with pytest.raises(KeyError, match="'z' is not a source"):
            Rename(stream, {"z": "w"})
        with caplog.at_level(logging.WARNING):
            assert Rename(stream, {"z": "w"}, on_non_existent="warn").sources == ("x", "y")
        assert "'z' is not a source" in caplog.text
        assert Rename(stream, {"z": "x", "x": "q"}, on_non_existent="ignore").sources == ("q", "y")
        with pytest.raises(KeyError, match="several sources"):
            Rename(stream, {"x": "y"})
        with pytest.raises(KeyError, match="several sources"):
            Rename(stream, {"x": "k", "y": "k"})
        with pytest.raises(ValueError, match="on_non_existent must be"):
            Rename(stream, {}, on_non_existent="shout")


def test_filter_sources_keeps_child_order_and_returns_tuples():
    stream = example_stream(a=[1], b=[2], c=[3])
    filtered = FilterSources(stream, ("c", "a"))
    assert filtered.sources == ("a", "c")
    assert values(filtered) == [(1, 3)]
    with pytest.raises(ValueError, match="not in the stream"):
        FilterSources(stream, ("d",))


def test_base_transformer_checks_example_batch_mismatch():
    class Double(AgnosticTransformer):
        def transform_any(self, data):
            return tuple(2 * d for d in data)
    assert values(Double(example_stream(x=[1, 2]))) == [(2,), (4,)]
    wrong = Double(example_stream(x=[1]), produces_examples=False)
    with pytest.raises(NotImplementedError, match="produces batches while its child produces examples"):
        values(wrong)
    with pytest.raises(NotImplementedError):
        values(Transformer(example_stream(x=[1])))


def test_expects_axis_labels(caplog):
    class Checker(ExpectsAxisLabels, Transformer):
        pass
    checker = Checker(example_stream(x=[1]))
    checker.verify_axis_labels(("a",), ("a",), "x")
    with pytest.raises(AxisLabelsMismatchError, match="expected axis labels"):
        checker.verify_axis_labels(("a",), ("b",), "y")
    with caplog.at_level(logging.WARNING):
        checker.verify_axis_labels(("a",), None, "z")
    assert "cannot verify" in caplog.text


class TestSequences:
    def test_window(self):
        stream = Window(1, 2, 2, True, example_stream(x=[list(range(5)), [9]]))
        assert stream.sources == ("x", "targets")
        assert values(stream) == [([0, 1], [1, 2]), ([1, 2], [2, 3]), ([2, 3], [3, 4])]
        nonoverlapping = Window(0, 2, 1, False, example_stream(x=[list(range(4))]))
        assert values(nonoverlapping) == [([0, 1], [2]), ([1, 2], [3])]

    def test_negative_offset_never_starts_before_zero(self):
        stream = Window(-1, 2, 1, True, example_stream(x=[list(range(4))]))
        assert values(stream) == [([1, 2], [0]), ([2, 3], [1])]

    def test_ngrams(self):
        stream = NGrams(2, example_stream(x=[[1, 2, 3, 4]]))
        assert values(stream) == [([1, 2], 3), ([2, 3], 4)]

    def test_bad_input(self):
        with pytest.raises(ValueError, match="exactly one source"):
            NGrams(2, example_stream(x=[[1]], y=[[1]]))
        with pytest.raises(ValueError, match="must produce examples"):
            NGrams(2, batch_stream(x=numpy.ones(2)))


class TestMultiProcessing:
    @pytest.mark.timeout(60)
    def test_same_batches_and_pickles_before_start(self):
        stream = batch_stream(batch_size=3, x=numpy.arange(10))
        wrapped = MultiProcessing(stream, max_store=4)
        clone = pickle.loads(pickle.dumps(wrapped))
        try:
            for _ in range(2):
                assert [list(b[0]) for b in values(wrapped)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
            assert [list(b["x"]) for b in values(clone, as_dict=True)][-1] == [9]
        finally:
            wrapped.close()
            clone.close()

    @pytest.mark.timeout(60)
    def test_child_death_raises_instead_of_hanging(self):
        from shmfuel.exceptions import ProducerDiedError
        stream = Mapping(batch_stream(x=numpy.arange(10)), die_on_third)
        wrapped = MultiProcessing(stream, max_store=2)
        try:
            with pytest.raises(ProducerDiedError, match="exited with code 3"):
                values(wrapped)
        finally:
            wrapped.close()


def die_on_third(data):
    if data[0][0] == 4:
        os._exit(3)
    return data


def test_background_process_puts_epochs_and_markers():
    import threading
    stream = batch_stream(batch_size=2, x=numpy.arange(3))
    helper = None

    def stop_after_first_epoch(data):
        if int(data[0][0]) == 2:
            helper.run_background = False
        return data
    helper = __import__("shmfuel.transformers", fromlist=["BackgroundProcess"]).BackgroundProcess(
        Mapping(stream, stop_after_first_epoch), 10)
    thread = threading.Thread(target=helper.main)
    thread.start()
    thread.join(10)
    got = [helper.get_next_data(timeout=5) for _ in range(3)]
    assert [list(b[0]) for b in got[:2]] == [[0, 1], [2]]
    assert got[2] is StopIteration
    helper.batches.close()
    helper.batches.join_thread()


@pytest.mark.parametrize("make", [
    lambda: Batch(example_stream(x=list(range(7))), ConstantScheme(2)),
    lambda: Cache(batch_stream(batch_size=2, x=numpy.arange(7)), ConstantScheme(3)),
    lambda: Unpack(batch_stream(batch_size=3, x=numpy.arange(7))),
    lambda: Padding(Batch(example_stream(x=[[1] * i for i in range(1, 8)]), ConstantScheme(2))),
    lambda: NGrams(2, example_stream(x=[list(range(6)), list(range(4))])),
])
def test_mid_epoch_iterators_pickle_and_resume(make):
    stream = make()
    it = stream.get_epoch_iterator()
    next(it)
    clone = pickle.loads(pickle.dumps(it))
    rest, clone_rest = list(it), list(clone)
    assert len(rest) > 0
    assert repr(clone_rest) == repr(rest)
