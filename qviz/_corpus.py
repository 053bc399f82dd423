"""Real English sentences available offline: the docstrings of Python's standard library.

The sentences are written by people for people, cover many topics, and ship
with every Python install, so calibration and evaluation text never needs the
network. The split into calibration and held-out sentences is a hash of the
sentence text, so it is stable across runs and machines with the same Python.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import warnings
from collections.abc import Iterator

# Modules with plenty of prose and no import-time side effects.
_MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmath codecs collections "
    "colorsys configparser contextlib copy csv dataclasses datetime decimal difflib "
    "email enum filecmp fnmatch fractions ftplib functools gc getopt gettext glob gzip "
    "hashlib heapq hmac html http imaplib inspect io ipaddress itertools json keyword "
    "linecache locale logging lzma mailbox math mimetypes numbers operator optparse os "
    "pathlib pickle pkgutil platform plistlib poplib pprint profile pstats queue quopri "
    "random re reprlib sched secrets select selectors shelve shlex shutil signal site "
    "smtplib socket socketserver sqlite3 ssl stat statistics string struct subprocess "
    "symtable sysconfig tabnanny tarfile tempfile textwrap threading timeit token "
    "tokenize trace traceback tracemalloc types typing unittest urllib uuid warnings "
    "wave weakref xml zipfile zipimport zlib zoneinfo"
).split()

_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)][.!?])\s+(?=[A-Z])")
_BAD = re.compile(r">>>|::|`|\{|\}|\\|==|\w\(\)|\b\w+_\w+\b|\$|%|\|")


def _docstrings() -> list[tuple[str, str]]:
    """``(module name, docstring)`` of every module, class, function and method, in a fixed order.

    Modules written in Python are read from their source files with :mod:`ast`,
    not imported: what other libraries do to the standard library at run time
    (transformers adds methods to ``logging.Logger``, others wrap ``typing`` or
    ``inspect`` helpers) then cannot change the corpus, so it is the same in
    every process. Modules written in C are introspected (nothing patches those).
    """
    docs: list[tuple[str, str]] = []
    for modname in _MODULES:
        try:
            spec = importlib.util.find_spec(modname)
        except (ImportError, ValueError):
            spec = None
        if spec is None:  # a module missing from a trimmed Python is no error
            continue
        origin = spec.origin or ""
        if origin.endswith(".py"):
            docs.extend((modname, doc) for doc in _source_docstrings(origin))
        else:
            docs.extend((modname, doc) for doc in _builtin_docstrings(modname))
    return docs


def _source_docstrings(path: str) -> list[str]:
    """Docstrings of a Python source file: the module, its top-level classes and functions, their methods."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    out = [ast.get_docstring(tree) or ""]
    for node in sorted((n for n in tree.body if isinstance(n, defs)), key=lambda n: n.name):
        out.append(ast.get_docstring(node) or "")
        if isinstance(node, ast.ClassDef):
            members = (m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)))
            out.extend(ast.get_docstring(m) or "" for m in sorted(members, key=lambda m: m.name))
    return out


def _builtin_docstrings(modname: str) -> list[str]:
    """Docstrings of a module written in C: the module, its classes, functions and methods."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(modname)
        except Exception:
            return []
    out = [inspect.getdoc(module) or ""]
    for _, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            out.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            out.extend(inspect.getdoc(m) or "" for _, m in sorted(vars(obj).items()) if inspect.isroutine(m))
    return out


def _prose_sentences(doc: str) -> Iterator[str]:
    """The sentences of one docstring that read as English prose."""
    for paragraph in re.split(r"\n\s*\n", doc):
        text = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(text):
            sentence = sentence.strip()
            if _is_prose(sentence):
                yield sentence


def _is_prose(sentence: str) -> bool:
    if not (40 <= len(sentence) <= 200):
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if _BAD.search(sentence):
        return False
    words = sentence.split()
    if len(words) < 7:
        return False
    letters = sum(c.isalpha() or c in " ,.;'-" for c in sentence)
    return letters / len(sentence) > 0.95


def _key(sentence: str) -> int:
    return int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "little")


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, str]:
    """Every unique prose sentence -> the first module (in ``_MODULES`` order) whose docstrings hold it.

    The standard library's sources are parsed once per process, here.
    """
    source: dict[str, str] = {}
    for modname, doc in _docstrings():
        for sentence in _prose_sentences(doc):
            source.setdefault(sentence, modname)
    return source


@functools.lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Every unique prose sentence, in a stable pseudo-random order.

    Examples
    --------
    >>> s = sentences()
    >>> len(s) > 1000
    True
    """
    return tuple(sorted(_sources(), key=_key))


def split(name: str) -> tuple[str, ...]:
    """The ``"calib"`` or ``"eval"`` part of :func:`sentences` (one in four is held out)."""
    if name not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval'; got {name!r}.")
    want_eval = name == "eval"
    return tuple(s for s in sentences() if (_key(s) % 4 == 0) == want_eval)


@functools.lru_cache(maxsize=1)
def labelled_sentences() -> tuple[tuple[str, str], ...]:
    """Every sentence of :func:`sentences` with the standard-library module it comes from.

    A sentence found in several modules' docstrings is labelled with the first
    module in ``_MODULES`` order. The order is that of :func:`sentences`.

    Examples
    --------
    >>> pairs = labelled_sentences()
    >>> len(pairs) == len(sentences()), all(m in _MODULES for _, m in pairs[:10])
    (True, True)
    """
    source = _sources()
    return tuple((s, source[s]) for s in sentences())
