"""``python -m shmfuel serve``: its arguments, without starting a server."""

import sys

import pytest

from shmfuel.__main__ import load_function, load_stream, main, shard_spec

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A module ``factories`` in the current directory; sys.path restored."""
    (tmp_path / "factories.py").write_text(
        "from shmfuel.datasets import IterableDataset\n"
        "from shmfuel.streams import DataStream\n"
        "def stream():\n"
        "    return DataStream(IterableDataset({'x': [1, 2]}))\n"
        "STREAM = stream()\n"
        "def number():\n"
        "    return 42\n"
        "NUMBER = 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "factories", raising=False)
    yield
    sys.modules.pop("factories", None)


def test_a_factory_or_a_stream_is_loaded(factories):
    assert [x for x, in load_stream("factories:stream").get_epoch_iterator()] == [1, 2]
    assert load_stream("factories:STREAM").sources == ("x",)


@pytest.mark.parametrize("spec,message", [
    ("factories", "expected package.module:factory"),
    ("no_such_module_here:stream", "cannot import 'no_such_module_here'"),
    ("factories:nothing", "factories has no 'nothing'"),
    ("factories:number", "gave a int, not a data stream"),
])
def test_a_bad_factory_is_named_with_the_fix(factories, spec, message):
    with pytest.raises(SystemExit) as raised:
        load_stream(spec)
    assert message in str(raised.value)


def test_a_worker_init_function_is_loaded_or_named_with_the_fix(factories):
    assert load_function("factories:number")() == 42
    for spec, message in [("factories", "expected package.module:function"),
                          ("factories:nothing", "name a function of the producer's index"),
                          ("factories:NUMBER", "is a int, not a function")]:
        with pytest.raises(SystemExit) as raised:
            load_function(spec)
        assert message in str(raised.value)


def test_a_missing_module_says_where_to_look(factories):
    with pytest.raises(SystemExit, match="PYTHONPATH"):
        load_stream("no_such_module_here:stream")


def test_shards():
    assert shard_spec("0/2") == (0, 2)
    assert shard_spec("3/4") == (3, 4)


@pytest.mark.parametrize("text", ["2", "2/2", "3/2", "a/b", "-1/2", "1/", "/2"])
def test_a_bad_shard_is_refused_before_anything_starts(capsys, text):
    with pytest.raises(SystemExit) as raised:
        main(["serve", "factories:stream", f"--shard={text}"])
    assert raised.value.code == 2
    assert "0 <= K < N" in capsys.readouterr().err
