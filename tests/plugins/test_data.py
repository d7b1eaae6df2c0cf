"""make_contexts and the data-source plugins: python-stdlib, text-files, hf-datasets."""

from __future__ import annotations

import ast
import json
import sys
from itertools import islice

import pytest
import torch

import saebench
from saebench import plugin_manager
from saebench.plugins.data_sources.hf_datasets import HFDatasetsSource
from saebench.plugins.data_sources.python_stdlib import PythonStdlibSource, code_documents, prose_documents
from saebench.plugins.data_sources.text_files import TextFilesSource
from saebench.run.data import make_contexts


class CharAdapter:
    """Stand-in adapter: one token per character (its code point), BOS 1000, EOS 1001."""

    def __init__(self, bos=1000, eos=1001):
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos, eos, None

    def tokenize(self, text):
        return [ord(c) for c in text]


class ListSource(saebench.DataSource):
    name = "list"

    def __init__(self, docs):
        self.docs = docs

    def documents(self):
        yield from self.docs


DOCS = ["abcde", "", "fgh", "ijklmnopqrstuvwxyz", "0123456789"]


def _stream(docs, sep):
    """The expected token stream, written out directly: documents joined by the separator."""
    out = []
    for d in (d for d in docs if d):
        if out and sep is not None:
            out.append(sep)
        out += [ord(c) for c in d]
    return out


@pytest.mark.parametrize("bos,eos", [(1000, 1001), (None, 1001), (1000, None), (None, None)])
def test_make_contexts_layout(bos, eos):
    adapter = CharAdapter(bos, eos)
    ctx = make_contexts(adapter, ListSource(DOCS), context_length=6, n_tokens=20)
    assert ctx.dtype == torch.long and ctx.shape == (4, 6)  # ceil(20 / 6)
    body = ctx[:, 1:] if bos is not None else ctx
    if bos is not None:
        assert (ctx[:, 0] == bos).all()
    expected = _stream(DOCS, eos)[: body.numel()]
    assert body.reshape(-1).tolist() == expected
    if eos is not None:  # the EOS id sits exactly between documents (the empty one is skipped)
        assert expected[5] == eos and expected[9] == eos and expected.count(eos) == 2


def test_make_contexts_is_deterministic_and_stops_reading_early():
    reads = []

    class Counting(ListSource):
        def documents(self):
            for d in self.docs:
                reads.append(d)
                yield d

    a = make_contexts(CharAdapter(), Counting(DOCS * 3), 8, 16)
    assert reads == DOCS[:4]  # 2 contexts x 7 tokens = 14 tokens: four documents suffice
    b = make_contexts(CharAdapter(), Counting(DOCS * 3), 8, 16)
    assert torch.equal(a, b)


def test_make_contexts_refuses_a_short_run():
    with pytest.raises(saebench.ConfigError, match=r"data source 'list' yielded only 39 tokens, fewer than the 63 requested"):
        make_contexts(CharAdapter(), ListSource(DOCS), context_length=8, n_tokens=72)
    with pytest.raises(saebench.ConfigError, match="context_length"):
        make_contexts(CharAdapter(), ListSource(DOCS), context_length=1, n_tokens=8)


# -- python-stdlib ----------------------------------------------------------------------------
def test_python_stdlib_prose_and_code():
    prose = list(islice(PythonStdlibSource(mix="prose").documents(), 200))
    code = list(islice(PythonStdlibSource(mix="code").documents(), 20))
    from pydoc_data.topics import topics

    assert prose[0] == topics[sorted(topics)[0]]
    assert len(prose) == 200 and all(d.strip() for d in prose)
    docstring_docs = prose[len(topics):]
    assert docstring_docs and not any(d.lstrip().startswith(("import ", "def ", "class ")) for d in docstring_docs)
    for d in code:
        ast.parse(d)  # real Python source
    assert any("def " in d for d in code)


def test_python_stdlib_all_interleaves_and_is_deterministic():
    first = list(islice(PythonStdlibSource().documents(), 60))
    again = list(islice(PythonStdlibSource(mix="all").documents(), 60))
    assert first == again
    code = set(islice(code_documents(), 200))
    prose = set(islice(prose_documents(), 300))
    n_code = sum(len(d) for d in first[:30] if d in code)
    n_prose = sum(len(d) for d in first[:30] if d in prose)
    assert n_code + n_prose == sum(len(d) for d in first[:30])
    assert 0.3 < n_prose / (n_code + n_prose) < 0.7  # any prefix holds both, about half each
    assert first[0] in prose and first[1] in code


def test_python_stdlib_options():
    with pytest.raises(saebench.ConfigError, match="mix"):
        PythonStdlibSource(mix="poetry")
    with pytest.raises(saebench.ConfigError, match="'lang'"):
        PythonStdlibSource(lang="en")
    assert plugin_manager.get("data_source", "python-stdlib") is PythonStdlibSource


# -- text-files -------------------------------------------------------------------------------
@pytest.fixture
def corpus(tmp_path, monkeypatch):
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay\nay")
    (tmp_path / "sub" / "deep" / "c.txt").write_text("sea")
    (tmp_path / "sub" / "notes.md").write_text("# notes")
    rows = [{"text": "one", "id": 1}, {"text": "two"}, {"body": "three", "text": "3"}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_text_files_globs_and_jsonl(corpus):
    src = TextFilesSource(paths=["**/*.txt", "*.jsonl", "a.txt"])
    assert list(src.documents()) == ["ay\nay", "bee", "sea", "one", "two", "3"]
    assert [p.as_posix() for p in src.files] == ["a.txt", "b.txt", "sub/deep/c.txt", "rows.jsonl"]  # a.txt once
    with pytest.raises(saebench.ConfigError, match=r"rows.jsonl: line 1 has no string field 'body'"):
        list(TextFilesSource(paths=["rows.jsonl"], text_field="body").documents())
    absolute = TextFilesSource(paths=str(corpus / "sub" / "*.md"))
    assert list(absolute.documents()) == ["# notes"]


def test_text_files_errors(corpus):
    (corpus / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(saebench.ConfigError, match=r"bad.jsonl: line 2 has no string field 'text'"):
        list(TextFilesSource(paths=["bad.jsonl"]).documents())
    (corpus / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(saebench.ConfigError, match=r"broken.jsonl: line 2 is not valid JSON"):
        list(TextFilesSource(paths=["broken.jsonl"]).documents())
    with pytest.raises(saebench.ConfigError, match=r"glob 'missing/\*\*/\*.txt' matches no file"):
        TextFilesSource(paths=["a.txt", "missing/**/*.txt"])
    with pytest.raises(saebench.ConfigError, match="'paths'"):
        TextFilesSource()
    with pytest.raises(saebench.ConfigError, match="'path'"):
        TextFilesSource(path="a.txt")
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(saebench.ConfigError, match="latin1.txt: not UTF-8"):
        list(TextFilesSource(paths=["latin1.txt"]).documents())


def test_text_files_through_make_contexts(corpus):
    ctx = make_contexts(CharAdapter(), TextFilesSource(paths=["*.txt"]), context_length=5, n_tokens=10)
    assert ctx.tolist() == [[1000, ord("a"), ord("y"), ord("\n"), ord("a")], [1000, ord("y"), 1001, ord("b"), ord("e")]]


# -- hf-datasets -------------------------------------------------------------------------------
def test_hf_datasets_from_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"document number {i}" for i in range(2500)]  # more than one iteration batch
    datasets.Dataset.from_dict({"text": texts, "n": list(range(2500))}).save_to_disk(str(tmp_path / "ds"))
    assert list(HFDatasetsSource(path=str(tmp_path / "ds")).documents()) == texts

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["a", "b"]}),
                               "test": datasets.Dataset.from_dict({"body": ["c"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    src = HFDatasetsSource(path=str(tmp_path / "dd"), split="test", text_field="body")
    assert list(src.documents()) == ["c"]
    with pytest.raises(saebench.ConfigError, match="no split 'validation'; splits: train, test"):
        list(HFDatasetsSource(path=str(tmp_path / "dd"), split="validation", text_field="body").documents())
    with pytest.raises(saebench.ConfigError, match="no column 'text'; columns: body"):
        list(HFDatasetsSource(path=str(tmp_path / "dd")).documents())


def test_hf_datasets_from_local_files_and_errors(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "rows.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the user's cache
    assert list(HFDatasetsSource(path=str(tmp_path)).documents()) == ["x", "y"]  # load_dataset on a folder
    with pytest.raises(saebench.ConfigError, match="'path'"):
        HFDatasetsSource()
    with pytest.raises(saebench.ConfigError, match="'revision'"):
        HFDatasetsSource(path="x", revision="main")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(saebench.ConfigError, match=r"install saebench\[hf\]"):
        HFDatasetsSource(path=str(tmp_path))
