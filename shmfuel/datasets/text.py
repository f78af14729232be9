"""TextFile: sentences of one or more text files as lists of word ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from shmfuel.datasets.base import Dataset
from shmfuel.utils.formats import open_


class _Lines:
    """Lines of several files in turn; pickles as (file, byte offset)."""

    def __init__(self, files: list[str], encoding: str | None) -> None:
        self.files = list(files)
        self.encoding = encoding or "utf-8"
        self.index = 0
        self.offset = 0
        self._file: IO[bytes] | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        while self.index < len(self.files):
            if self._file is None:
                self._file = open_(self.files[self.index], "rb")
                if self.offset:
                    self._file.seek(self.offset)
            line = self._file.readline()
            if line:
                self.offset = self._file.tell()
                return line.decode(self.encoding)
            self.close()
            self.index += 1
            self.offset = 0
        raise StopIteration

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state


class TextFile(Dataset):
    """Reads text files line by line; each line becomes a list of ids.

    Parameters
    ----------
    files : list of str
        The files (``.gz`` files are decompressed).
    dictionary : dict
        Maps words (or characters) to ids.
    bos_token, eos_token : str or None, optional
        Tokens added at the start and end of each sentence.
    unk_token : str or None, optional
        Token for symbols missing from ``dictionary``; if None, those raise
        ``KeyError``.
    level : 'word' or 'character', optional
        Split lines on whitespace, or into characters (after ``strip()``).
    preprocess : callable, optional
        Applied to each line first, e.g. ``str.lower``.
    encoding : str, optional
        The files' encoding, UTF-8 by default.

    The state pickles mid-epoch and resumes at the next line.

    """

    provides_sources = ("features",)
    example_iteration_scheme = None

    def __init__(self, files: Any, dictionary: dict[str, int],
                 bos_token: str | None = "<S>", eos_token: str | None = "</S>",
                 unk_token: str | None = "<UNK>", level: str = "word",
                 preprocess: Callable[[str], str] | None = None,
                 encoding: str | None = None) -> None:
        if isinstance(files, str):
            files = [files]
        self.files = list(files)
        self.dictionary = dictionary
        for name, token in (("bos_token", bos_token), ("eos_token", eos_token),
                            ("unk_token", unk_token)):
            if token is not None and token not in dictionary:
                raise ValueError(f"{name} {token!r} is not in the dictionary")
        if level not in ("word", "character"):
            raise ValueError(f"level must be 'word' or 'character', "
                             f"got {level!r}")
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.unk_token = unk_token
        self.level = level
        self.preprocess = preprocess
        self.encoding = encoding
        super().__init__()

    def open(self) -> _Lines:
        return _Lines(self.files, self.encoding)

    def close(self, state: Any) -> None:
        if isinstance(state, _Lines):
            state.close()

    def get_data(self, state: Any = None, request: Any = None) -> tuple[Any, ...]:
        if request is not None:
            raise ValueError("TextFile has no indexing: pass request=None")
        if state is None:
            raise ValueError("TextFile.get_data needs the state made by open()")
        sentence = next(state)
        if self.preprocess is not None:
            sentence = self.preprocess(sentence)
        symbols = (sentence.split() if self.level == "word"
                   else list(sentence.strip()))
        data = [self.dictionary[self.bos_token]] if self.bos_token else []
        unk = (self.dictionary[self.unk_token]
               if self.unk_token is not None else None)
        for symbol in symbols:
            if symbol in self.dictionary:
                data.append(self.dictionary[symbol])
            elif unk is not None:
                data.append(unk)
            else:
                raise KeyError(f"{symbol!r} is not in the dictionary and "
                               "unk_token is None")
        if self.eos_token:
            data.append(self.dictionary[self.eos_token])
        return (data,)


__all__ = ["TextFile"]
