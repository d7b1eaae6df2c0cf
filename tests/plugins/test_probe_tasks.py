"""The built-in probe tasks: hand-labelled code, the stdlib tasks' texts, user files, and one end-to-end run."""

from __future__ import annotations

import ast
import json
from collections import Counter

import pytest

import saebench
from saebench import plugin_manager
from saebench.errors import ConfigError, DataError
from saebench.plugins.probe_tasks import (
    _code,
    bracket_depth,
    python_string_comment,
    python_syntax,
    python_token_type,
    text_source,
)
from saebench.plugins.probe_tasks.file import FileTask
from saebench.plugins.probe_tasks.hf_dataset import HFDatasetTask
from saebench.plugins.probe_tasks.python_syntax import PythonSyntaxTask
from saebench.plugins.probe_tasks.python_token_type import PythonTokenTypeTask
from saebench.plugins.probe_tasks.text_source import TextSourceTask
from saebench.probes.tasks import build_probe_data, make_task

TASKS = ("text_source", "python_token_type", "python_syntax", "bracket_depth", "python_string_comment", "file",
         "hf_dataset")


def spell(source, spans):
    """The spans as (text, label) pairs: easier to read, and to write by hand, than offsets."""
    return [(source[s:e], label) for s, e, label in spans]


# -- hand-labelled code ------------------------------------------------------------------------


def test_token_types_by_hand():
    src = 'if x: print(len(y), 1.5)  # hi\ns = "a"\n'
    assert python_token_type.label_spans(src) == [
        (0, 2, "keyword"), (3, 4, "identifier"), (4, 5, "operator"), (6, 11, "builtin"), (11, 12, "bracket"),
        (12, 15, "builtin"), (15, 16, "bracket"), (16, 17, "identifier"), (17, 18, "bracket"), (18, 19, "operator"),
        (20, 23, "number"), (23, 24, "bracket"), (26, 30, "comment"),
        (31, 32, "identifier"), (33, 34, "operator"), (35, 38, "string"),
    ]
    src = "None and True or __name__"
    assert spell(src, python_token_type.label_spans(src)) == [
        ("None", "keyword"), ("and", "keyword"), ("True", "keyword"), ("or", "keyword"), ("__name__", "identifier")]


def test_token_offsets_count_lines_at_newlines_only():
    # a form feed is a line break for str.splitlines but not for tokenize; the string spans two lines
    src = 'x = 1\n\x0c\ny = """a\nb"""\nf"{x}" @ 0x1F\n'
    assert python_token_type.label_spans(src) == [
        (0, 1, "identifier"), (2, 3, "operator"), (4, 5, "number"),
        (8, 9, "identifier"), (10, 11, "operator"), (12, 21, "string"),
        (22, 28, "string"), (29, 30, "operator"), (31, 35, "number"),
    ]


def test_syntax_labels_by_hand():
    src = "def f(a, b=2):\n    return a + b  # c\n"
    assert python_syntax.label_spans(src) == [
        (0, 3, "FunctionDef"), (4, 6, "FunctionDef"), (6, 7, "arg"), (7, 8, "FunctionDef"), (9, 10, "arg"),
        (10, 11, "FunctionDef"), (11, 12, "Constant"), (12, 14, "FunctionDef"),
        (19, 25, "Return"), (26, 27, "Name"), (28, 29, "BinOp"), (30, 31, "Name"),  # the comment: no label
    ]
    # f-strings are leaves; the ";" between statements is in no node
    src = 'f"{x}"; y.z\n'
    assert spell(src, python_syntax.label_spans(src)) == [
        ('f"{x}"', "JoinedStr"), ("y", "Name"), (".z", "Attribute")]
    # a comment inside a string constant's range (implicit concatenation) is still a comment; "#" in a string is not
    src = 'x = ("abc"  # c\n     "d#f")\n'
    assert spell(src, python_syntax.label_spans(src)) == [
        ("x", "Name"), ("=", "Assign"), ("(", "Assign"), ('"abc"', "Constant"), ('"d#f"', "Constant"), (")", "Assign")]


def test_syntax_offsets_are_characters_not_utf8_bytes():
    src = 'é = "ü"; x\n'
    assert python_syntax.label_spans(src) == [(0, 1, "Name"), (2, 3, "Assign"), (4, 7, "Constant"), (9, 10, "Name")]


def test_bracket_depth_by_hand():
    src = 'f(a[1], "(")  # )\n'
    assert python_code_depths(src) == [
        ("f(", "0"), ("a[", "1"), ("1", "2"), ("],", "1"), ('"("', "1"), (")", "0"), ("#", "0"), (")", "0")]
    assert python_code_depths("g((((x))))\n") == [
        ("g(", "0"), ("(", "1"), ("(", "2"), ("(x)", "3+"), (")", "2"), (")", "1"), (")", "0")]
    # depth carries across lines
    assert python_code_depths("x = [\n  1, {\n}]\ny\n") == [
        ("x", "0"), ("=", "0"), ("[", "0"), ("1,", "1"), ("{", "1"), ("}", "1"), ("]", "0"), ("y", "0")]


def python_code_depths(src):
    return spell(src, bracket_depth.label_spans(src))


def test_string_comment_by_hand():
    src = 'x = "a b"  # c "d"\ny = 1 + \\\n    2\n'
    assert spell(src, python_string_comment.label_spans(src)) == [
        ("x", "code"), ("=", "code"), ('"a', "string"), ('b"', "string"), ("#", "comment"), ("c", "comment"),
        ('"d"', "comment"), ("y", "code"), ("=", "code"), ("1", "code"), ("+", "code"), ("\\", "code"), ("2", "code")]
    src = "'''#'''#'\n"
    assert spell(src, python_string_comment.label_spans(src)) == [
        ("'''#'''", "string"), ("#'", "comment")]


def test_untokenizable_source_raises():
    with pytest.raises((SyntaxError, _code.tokenize.TokenError)):
        python_token_type.label_spans('x = """never closed\n')
    with pytest.raises(SyntaxError):
        python_syntax.label_spans("def (:\n")


def test_line_chunks_and_clip():
    src = "a\nbb\nccc\ndddd\n"
    assert [src[s:e] for s, e in _code.line_chunks(src, 3)] == ["a\nbb\nccc\n", "dddd\n"]
    assert [src[s:e] for s, e in _code.line_chunks("a\nb", 1)] == ["a\n", "b"]
    spans = [(0, 5, "a"), (8, 20, "s"), (22, 25, "b"), (30, 31, "c")]
    assert _code.clip(spans, 10, 23) == ((0, 10, "s"), (12, 13, "b"))
    assert _code.clip(spans, 5, 8) == ()
    assert _code.spread(10, 4) == [1, 3, 6, 8] and _code.spread(3, 4) == [0, 1, 2]


# -- the stdlib code tasks ----------------------------------------------------------------------


@pytest.mark.parametrize("module,task", [
    (python_token_type, PythonTokenTypeTask),
    (bracket_depth, bracket_depth.BracketDepthTask),
    (python_string_comment, python_string_comment.PythonStringCommentTask),
])
def test_code_task_texts_carry_the_whole_file_labels(module, task):
    examples = list(task(lines=8, max_texts=30).examples())
    assert len(examples) == 30
    assert examples == list(task(lines=8, max_texts=30).examples())  # deterministic
    labels = Counter()
    for ex in examples:
        assert ex.text.count("\n") <= 8 and ex.label is None
        ends = [0] + [e for _, e, _ in ex.spans]
        for (s, e, label), prev_end in zip(ex.spans, ends):
            assert prev_end <= s < e <= len(ex.text)
            labels[label] += 1
    assert set(labels) <= set(module.CLASSES) and len(labels) >= 3
    # each text is a piece of a stdlib file whose own labels, cut to the text, are the text's spans
    files = {src: src for _, src in _code.code_files()}
    ex = examples[5]
    source = next(src for src in files if ex.text in src)
    start = source.index(ex.text)
    assert _code.clip(sorted(module.label_spans(source)), start, start + len(ex.text)) == ex.spans


def test_syntax_task_keeps_the_top_classes_and_its_taxonomy_follows_ast():
    task = PythonSyntaxTask(lines=12, max_texts=40, top_classes=8)
    examples = list(task.examples())
    classes = task.classes()
    assert len(classes) == 8 and {s[2] for ex in examples for s in ex.spans} == set(classes)
    assert PythonSyntaxTask(lines=12, max_texts=40, top_classes=8).classes() == classes  # deterministic
    tree = task.taxonomy()
    assert "Name" in classes and tree["Name"] == "expr" and tree["expr"] == "AST" and "AST" not in tree
    for label in classes:
        parent = tree[label]
        cls = getattr(ast, label)
        assert cls.__bases__[0] is getattr(ast, parent) and (parent == "AST" or tree[parent] == "AST")
    assert set(tree) - set(classes) == {tree[c] for c in classes} - {"AST"}


def test_syntax_taxonomy_names_direct_bases():
    assert python_syntax.ast_parent("FunctionDef") == "stmt"
    assert python_syntax.ast_parent("arg") == "AST"
    assert python_syntax.ast_parent("ExceptHandler") == "excepthandler"


# -- text_source --------------------------------------------------------------------------------


def test_text_source_is_balanced_interleaved_and_deterministic():
    task = TextSourceTask(per_class=20, chars=300)
    examples = list(task.examples())
    assert examples == list(TextSourceTask(per_class=20, chars=300).examples())
    assert Counter(ex.label for ex in examples) == {"prose": 20, "code": 20, "docstring": 20}
    assert [ex.label for ex in examples[:6]] == ["prose", "code", "docstring"] * 2
    assert all(len(ex.text.strip()) >= 150 and len(ex.text) <= 300 for ex in examples)
    assert len({ex.text for ex in examples}) == len(examples)
    # code is code and prose is not
    code = [ex.text for ex in examples if ex.label == "code"]
    assert sum(("def " in t or "import " in t or " = " in t) for t in code) >= 15


def test_text_source_options(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown source 'poetry'"):
        TextSourceTask(sources=["prose", "poetry"])
    with pytest.raises(ConfigError, match="at least two"):
        TextSourceTask(sources=["prose"])
    missing = tmp_path / "no-docs"
    monkeypatch.setattr(text_source, "PYTHON_DOCS", missing)
    with pytest.raises(ConfigError, match=str(missing)):
        TextSourceTask(sources=["prose", "python-docs"])
    docs = tmp_path / "docs"
    (docs / "library").mkdir(parents=True)
    for i in range(3):
        (docs / "library" / f"m{i}.rst.txt").write_text(f"Module m{i}\n=========\n\n" + "Some reST prose.\n" * 40)
    monkeypatch.setattr(text_source, "PYTHON_DOCS", docs)
    got = list(TextSourceTask(sources=["python-docs", "code"], per_class=4, chars=200).examples())
    assert Counter(ex.label for ex in got) == {"python-docs": 4, "code": 4}


# -- the file task ------------------------------------------------------------------------------


def test_file_task_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('text,label,extra\nhello there,greeting,x\n"a, quoted\ntext",other,y\n')
    task = FileTask(path=str(csv_file))
    assert task.level == "sequence"
    assert [(ex.text, ex.label) for ex in task.examples()] == [("hello there", "greeting"), ("a, quoted\ntext", "other")]

    seq = tmp_path / "s.jsonl"
    seq.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": 3}\n')
    assert [(ex.text, ex.label) for ex in FileTask(path=str(seq)).examples()] == [("a", "x"), ("b", "3")]

    tok = tmp_path / "t.jsonl"
    tok.write_text(json.dumps({"text": "def f(): pass", "spans": [[4, 5, "name"], [0, 3, "kw"]]}) + "\n")
    taxonomy = tmp_path / "tree.json"
    taxonomy.write_text('{"name": "word", "kw": "word"}')
    task = FileTask(path=str(tok), level="token", taxonomy=str(taxonomy))
    assert task.level == "token" and type(task).level == "sequence"  # set on the instance only
    assert [ex.spans for ex in task.examples()] == [((0, 3, "kw"), (4, 5, "name"))]
    assert task.taxonomy() == {"name": "word", "kw": "word"}
    before = task.identity()
    tok.write_text(json.dumps({"text": "def g(): pass", "spans": [[4, 5, "name"]]}) + "\n")
    assert FileTask(path=str(tok), level="token", taxonomy=str(taxonomy)).identity() != before


def test_file_task_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="required"):
        FileTask()
    with pytest.raises(ConfigError, match="no such file") as err:
        FileTask(path=str(tmp_path / "missing.csv"))
    assert err.value.where == str(tmp_path / "missing.csv")
    # make_task (how scorers build tasks) keeps only the message: it must name the file
    with pytest.raises(ConfigError, match="missing.csv"):
        make_task({"name": "file", "options": {"path": str(tmp_path / "missing.csv")}}, "scorers.probe.task")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n')
    with pytest.raises(DataError, match="invalid JSON") as err:
        list(FileTask(path=str(bad)).examples())
    assert err.value.where == f"{bad}:3"
    cols = tmp_path / "cols.csv"
    cols.write_text("text,category\nhello,x\n")
    with pytest.raises(DataError, match="no column 'label'") as err:
        list(FileTask(path=str(cols)).examples())
    assert err.value.where == f"{cols}:1"
    short = tmp_path / "short.csv"
    short.write_text("text,label\nfine,x\nno label here\n")
    with pytest.raises(DataError) as err:
        list(FileTask(path=str(short)).examples())
    assert err.value.where == f"{short}:3"
    spans = tmp_path / "spans.jsonl"
    spans.write_text('{"text": "abc", "spans": [[0, 2, "a"]]}\n{"text": "abc", "spans": [[0, 2, "a"], [1, 3, "b"]]}\n')
    with pytest.raises(DataError, match="overlap") as err:
        list(FileTask(path=str(spans), level="token").examples())
    assert err.value.where == f"{spans}:2"
    spans.write_text('{"text": "abc", "spans": [[0, 9, "a"]]}\n')
    with pytest.raises(DataError, match="inside the text"):
        list(FileTask(path=str(spans), level="token").examples())
    with pytest.raises(ConfigError, match="jsonl"):
        FileTask(path=str(cols), level="token")
    with pytest.raises(ConfigError, match="level"):
        FileTask(path=str(cols), level="word")


# -- hf_dataset ---------------------------------------------------------------------------------


def test_hf_dataset_needs_datasets_or_names_class_labels(tmp_path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install saebench\[hf\]"):
            HFDatasetTask(path="imdb")
        return
    ds = datasets.Dataset.from_dict(
        {"text": ["good", "bad", "fine"], "label": [1, 0, 1]},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["neg", "pos"])}))
    ds.save_to_disk(str(tmp_path / "ds"))
    task = HFDatasetTask(path=str(tmp_path / "ds"))
    assert task.name == "hf_dataset"
    assert [(ex.text, ex.label) for ex in task.examples()] == [("good", "pos"), ("bad", "neg"), ("fine", "pos")]
    with pytest.raises(ConfigError, match="no column 'stars'"):
        list(HFDatasetTask(path=str(tmp_path / "ds"), label_field="stars").examples())


# -- registration and end to end ----------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_registered(name):
    cls = plugin_manager.get("probe_task", name)
    assert issubclass(cls, saebench.ProbeTask) and cls.name == name


class AsciiTokenTypes(PythonTokenTypeTask):
    """python_token_type's ASCII texts: with a byte-level tokenizer each token is then one character."""

    def examples(self):
        return (ex for ex in super().examples() if ex.text.isascii())


def test_build_probe_data_on_token_types(tiny_llama):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter

    adapter = HFCausalLMAdapter(str(tiny_llama))
    task = AsciiTokenTypes(lines=6, max_texts=16)
    data = build_probe_data(adapter, task, ["layers.0", "layers.1"], context_length=48)["layers.1"]
    examples = list(task.examples())

    expected = []  # per text: the (token id, label) of its labelled characters, worked out from the spans
    for ex in examples:
        chars = [None] * len(ex.text)
        for s, e, label in ex.spans:
            chars[s:e] = [label] * (e - s)
        text = ex.text[:47]  # BOS takes one of the 48 positions
        rows = [(adapter.tokenize(c)[0], chars[i]) for i, c in enumerate(text) if chars[i] is not None]
        if rows:
            expected.append(rows)
    assert data.stats["texts"] == len(expected) and data.stats["unaligned"] == 0
    assert data.acts.shape == (data.token_ids.shape[0], 32) and data.labels.shape == data.token_ids.shape
    for j, rows in enumerate(expected):
        mine = (data.sequence == j).nonzero().flatten().tolist()
        assert [(int(data.token_ids[i]), data.classes[int(data.labels[i])]) for i in mine] == rows
    assert set(data.classes) <= set(python_token_type.CLASSES) and len(data.classes) >= 4
    # texts are split as wholes: every row of a text is on the same side, and both sides are used
    side = {}
    for seq, train in zip(data.sequence.tolist(), data.train.tolist()):
        assert side.setdefault(seq, train) == train
    assert set(side.values()) == {True, False}
