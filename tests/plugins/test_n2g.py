"""The N2G explainer and scorer: hand-computed patterns and scores, the text format's round trip, the scorer
against a brute-force count, unparsable explanations, and one matrix run with intervals over latents."""

import asyncio
import csv
import io
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import saebench
import saebench.testing
from matrices import run as run_matrix
from saebench import plugin_manager
from saebench.interfaces import InterpContext
from saebench.interp.types import Example, Explanation, LatentRecord, mean_metrics
from saebench.plugins.explainers.n2g import (
    HEADER,
    Evidence,
    N2GExplainer,
    N2GParseError,
    format_patterns,
    generalises,
    n2g_patterns,
    normalise,
    parse_patterns,
)
from saebench.plugins.scorers.n2g import N2GScorer
from saebench.results.intervals import StoredUnits, intervals
from saebench.results.leaderboard import render
from tiny import firing_sae

CTX = InterpContext(sae=None, hookpoint="x")
_windows = iter(range(10**6))


def ex(tokens, acts=None, fire=None):
    """A window; ``fire(tokens, i)`` says where the latent fires (activation 1), or ``acts`` gives them."""
    if acts is None:
        acts = [1.0 if fire and fire(tokens, i) else 0.0 for i in range(len(tokens))]
    return Example(tokens=tokens, activations=[float(a) for a in acts], window=next(_windows),
                   kind="activating" if any(acts) else "random")


def rec(train, test=(), train_neg=(), test_neg=(), latent=0):
    return LatentRecord(latent=latent, n_activating=len(train) + len(test), density=0.01, max_activation=1.0,
                        train=list(train), test=list(test), train_negatives=list(train_neg),
                        test_negatives=list(test_neg))


def explain(record, **options):
    return asyncio.run(N2GExplainer(**options).explain(record))


def score(record, text):
    return asyncio.run(N2GScorer().score_latent(record, Explanation(latent=record.latent, explainer="n2g", text=text),
                                                CTX))


def lines(text):
    return text.split("\n")[1:]


# ---- hand-computed cases --------------------------------------------------------------------------------------

after_a = lambda t, i: t[i] == " b" and i > 0 and t[i - 1] == "a"


def test_b_after_a_is_recovered_as_a_b_with_precision_and_recall_one():
    # " b" also occurs without "a" (in the examples and the negatives), so the context is what the data supports
    train = [ex(["x", "a", " b", "c", " b"], fire=after_a) for _ in range(5)]
    train_neg = [ex(["c", " b", "a", "c"]) for _ in range(3)]
    test = [ex(["a", " b", " b", "a", " b"], fire=after_a), ex(["q", "a", " b"], fire=after_a)]
    test_neg = [ex([" b", "c", "a"]), ex(["a", "c", " b"])]
    r = rec(train, test, train_neg, test_neg)
    out = explain(r)
    assert out.failure is None and out.cost_usd == 0.0 and out.prompt_tokens == 0
    # "[ b]" alone fires at 5 of 13 training matches (s = 5/14); "a [ b]" at 5 of 5 (s = 5/6): kept
    assert out.text == HEADER + '\n"a" [" b"]  # train: fires at 5 of 5 matches'
    assert parse_patterns(out.text) == [("a", " b")]
    got = score(r, out.text)
    assert got.metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert got.parse_failures == 0 and got.cost_usd == 0.0
    assert {k: got.details[k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 3, "fp": 0, "fn": 0, "tn": 11}
    assert got.details["patterns"] == [{"pattern": '"a" [" b"]', "tp": 3, "fp": 0}]


def test_a_unigram_that_fires_everywhere_keeps_no_context():
    train = [ex(["x", " b", "c"], fire=lambda t, i: t[i] == " b") for _ in range(4)]
    assert lines(explain(rec(train, train_neg=[ex(["x", "c"])])).text) == ['[" b"]  # train: fires at 4 of 4 matches']


def test_an_unimportant_middle_token_becomes_a_wildcard():
    # fires on "c" two tokens after "a", whatever lies between
    two_after_a = lambda t, i: t[i] == "c" and i > 1 and t[i - 2] == "a"
    train = [ex(["a", m, "c"], fire=two_after_a) for m in ("x", "y", "z")]
    train_neg = [ex(["q", "x", "c"]), ex(["q", "y", "c"]), ex(["c"])]
    # pivot a x [c]: [c] s = 3/7; x [c] 1/3 (no wildcard helps); a x [c] 1/2, then * for x: a * [c] 3/4 >= 1/2,
    # * for a: [c] 3/7 < 3/4, * for c: a * [*] 3/4, not above -> a * [c] (3/4) wins. Pivot a z [c]: z [c] is 1/2
    # (z is seen once), below a * [c]'s 3/4, so the pivot's best pattern is a * [c] as well
    out = explain(rec(train, train_neg=train_neg))
    assert lines(out.text) == ['"a" * ["c"]  # train: fires at 3 of 3 matches']
    unseen = rec(train, test=[ex(["a", "w", "c"], fire=two_after_a)], test_neg=[ex(["w", "w", "c"])])
    assert score(unseen, out.text).metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_low_precision_pivots_are_dropped_and_an_empty_explanation_is_still_scored():
    # the max token " the" fires once in 6 matches, with no context that repeats: nothing reaches precision 0.5
    train = [ex(["w0", " the", "x"], acts=[0, 1, 0])]
    train_neg = [ex([f"n{i}", " the"]) for i in range(5)]
    r = rec(train, test=[ex(["y", " the"], acts=[0, 1])], train_neg=train_neg)
    pivot_only = n2g_patterns(r, max_context=0)  # with no context allowed the unigram alone is left: 1/6
    assert pivot_only == []
    out = explain(r, max_context=0)
    assert out.text == HEADER and parse_patterns(out.text) == []
    got = score(r, out.text)
    assert got.metrics == {"precision": None, "recall": 0.0, "f1": 0.0} and got.parse_failures == 0
    # with context, the pivot's own bigram (seen once, s = 1/2 > 1/7) is kept at precision 1
    assert lines(explain(r).text) == ['"w0" [" the"]  # train: fires at 1 of 1 matches']


def test_partial_precision_and_recall_by_hand():
    test = [ex(["a", " b", "c", " b", "d"], acts=[0, 1, 0, 0, 1]), ex(["e", " b"], acts=[0, 2])]
    test_neg = [ex([" b", "c"]), ex(["a", "d"])]
    r = rec([ex(["z"], acts=[1])], test, test_neg=test_neg)
    text = HEADER + '\n[" b"]\n"a" ["d"]'
    # [ b] matches at 4 tokens, 2 fire (tp 2, fp 2); "a" [d] matches once, no fire (fp 1); "d" in window 1 fires
    # unmatched (fn 1): precision 2/5, recall 2/3, f1 4/(4 + 3 + 1)
    got = score(r, text)
    assert got.metrics == pytest.approx({"precision": 2 / 5, "recall": 2 / 3, "f1": 0.5})
    assert {k: got.details[k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 2, "fp": 3, "fn": 1, "tn": 5}
    assert got.details["patterns"] == [{"pattern": '[" b"]', "tp": 2, "fp": 2}, {"pattern": '"a" ["d"]', "tp": 0,
                                                                                    "fp": 1}]


def test_patterns_match_inside_the_window_only_and_tokens_exactly():
    r = rec([ex(["z"], acts=[1])], test=[ex([" b", "a", " b"], acts=[1, 1, 1]), ex(["A", " B", "a", "b"], acts=[0] * 4)])
    got = score(r, HEADER + '\n"a" [" b"]')
    # window 0's first " b" has no token before it in its window; case and leading spaces are compared as they are
    assert (got.details["tp"], got.details["fp"], got.details["fn"]) == (1, 0, 2)


def test_the_explainer_reads_no_test_window_and_no_activating_token_means_no_text():
    train = [ex(["x", "a", " b"], fire=after_a) for _ in range(3)]
    a = explain(rec(train, test=[ex(["a", " b"], fire=after_a)], train_neg=[ex([" b"])]))
    b = explain(rec(train, test=[ex([" b", " b"], acts=[1, 1])], train_neg=[ex([" b"])],
                    test_neg=[ex(["a", " b"])] * 5))
    assert a.text == b.text
    none = explain(rec([ex(["x"], acts=[0])]))
    assert none.text is None and none.failure == "no activating tokens in the training examples"


def test_pivots_all_explains_every_firing_token():
    train = [ex(["p", "x", "q"], acts=[2, 0, 1]) for _ in range(3)]
    r = rec(train, train_neg=[ex(["x"])])
    assert [p for p, _, _ in n2g_patterns(r)] == [("p",)]  # only each window's max token
    assert sorted(p for p, _, _ in n2g_patterns(r, which="all")) == [("p",), ("q",)]


# ---- the text format --------------------------------------------------------------------------------------------

TRICKY = ["", " ", "a", '"', "\\", "\n", "\r\n", "\t", "#", "*", "[", "]", "[x]", '" #', "\u2028", "é", "😀", "\x00",
          " the", "N2G patterns:"]
token = st.one_of(st.sampled_from(TRICKY), st.text(max_size=4))
element = st.one_of(st.none(), token)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(element, max_size=4), element), max_size=6),
       st.lists(st.text(max_size=10), max_size=6))
def test_format_then_parse_is_the_identity(rows, notes):
    patterns = [normalise((*ctx, last)) for ctx, last in rows]
    comments = [(notes[i] if i < len(notes) else "").replace("\n", " ") for i in range(len(patterns))]
    assert parse_patterns(format_patterns(patterns, comments)) == patterns


def test_the_text_reads_as_documented():
    text = format_patterns([(" New", " York"), ("(", None, ")"), (None,)], ["train: fires at 12 of 12 matches", "", ""])
    assert text.split("\n") == [HEADER, '" New" [" York"]  # train: fires at 12 of 12 matches', '"(" * [")"]', "[*]"]
    # blank lines, comment lines, spacing inside the brackets and trailing comments are all accepted
    loose = HEADER + '\n\n# a comment\n   "(" *   [ ")" ]   # why\n[*]\n'
    assert parse_patterns(loose) == [("(", None, ")"), (None,)]
    assert parse_patterns(HEADER + '\n* * "a" ["b"]') == [("a", "b")]  # leading wildcards constrain nothing


@pytest.mark.parametrize("text, message", [
    ("", "first line must start with 'N2G patterns:'"),
    ("the word cat, in sentences about pets", "first line must start with 'N2G patterns:'"),
    ('tokens: "def", "class"', "first line must start"),
    (HEADER + '\n"a" "b"', r"line 2: no \[bracketed\] activating token"),
    (HEADER + '\n["a"] "b"', "line 2: nothing may follow"),
    (HEADER + '\n["a"] ["b"]', "line 2: nothing may follow"),
    (HEADER + '\n"a" ["b"', r"line 2: '\[' without its '\]'"),
    (HEADER + '\n\n"a" [b]', "line 3: expected a JSON-quoted token"),
    (HEADER + '\n"a\\q" ["b"]', "line 2: bad quoted token"),
    (HEADER + "\n[]", "line 2: expected a JSON-quoted token"),
])
def test_unparsable_texts_say_where(text, message):
    with pytest.raises(N2GParseError, match=message):
        parse_patterns(text)


def test_an_unparsable_explanation_is_one_parse_failure_with_no_metrics():
    r = rec([ex(["a"], acts=[1])], test=[ex(["a"], acts=[1])])
    got = score(r, "Fires on the letter a.")
    assert got.metrics == {"precision": None, "recall": None, "f1": None}
    assert got.parse_failures == 1 and "N2G patterns" in got.details["unparsable"]
    good = score(r, HEADER + '\n["a"]')
    agg = mean_metrics([got, good])  # the unparsable latent is left out of the means, not scored 0
    assert agg["precision"] == agg["recall"] == agg["f1"] == 1.0 and agg["parse_failures"] == 1.0


# ---- against brute force ----------------------------------------------------------------------------------------

VOCAB = ["a", "b", "c", " d", "e"]


def random_record(rng, latent):
    """Windows over a 5-token vocabulary; the latent fires at "b" after "a" (2.0), at " d" (1.0) and at random
    noise (0.5); windows where it fires nowhere are the negatives."""
    def window():
        toks = [rng.choice(VOCAB) for _ in range(rng.randint(1, 12))]
        acts = [2.0 if t == "b" and i and toks[i - 1] == "a" else 1.0 if t == " d" else 0.5 * (rng.random() < 0.05)
                for i, t in enumerate(toks)]
        return Example(tokens=toks, activations=acts, window=rng.randrange(10**9),
                       kind="activating" if any(acts) else "random")
    windows = [window() for _ in range(200)]
    pos, neg = [w for w in windows if any(w.activations)], [w for w in windows if not any(w.activations)]
    return rec(pos[:10], pos[10:20], neg[:5], neg[5:10], latent)


def brute_matches(p, tokens, i):
    """p matches ending at tokens[i]: the slice of len(p) tokens ending at i, compared element by element."""
    window = tokens[i - len(p) + 1 : i + 1] if i - len(p) + 1 >= 0 else None
    return window is not None and all(e is None or e == t for e, t in zip(p, window))


def brute_counts(patterns, examples):
    tp = fp = fn = tn = 0
    for e in examples:
        for i, a in enumerate(e.activations):
            pred, fire = any(brute_matches(p, e.tokens, i) for p in patterns), a > 0
            tp, fp, fn, tn = tp + (pred and fire), fp + (pred and not fire), fn + (fire and not pred), tn + (not pred
                                                                                                            and not fire)
    return tp, fp, fn, tn


def random_patterns(rng):
    return [tuple(rng.choice([*VOCAB, None]) if j < n - 1 or rng.random() < 0.8 else None for j in range(n))
            for n in (rng.randint(1, 3) for _ in range(rng.randint(0, 5)))]


@pytest.mark.parametrize("seed", range(8))
def test_the_scorer_agrees_with_a_brute_force_count(seed):
    rng = random.Random(seed)
    for latent in range(5):
        r = random_record(rng, latent)
        for patterns in (random_patterns(rng), parse_patterns(explain(r).text)):
            patterns = [normalise(p) for p in patterns]
            tp, fp, fn, tn = brute_counts(patterns, [*r.test, *r.test_negatives])
            got = score(r, format_patterns(patterns))
            assert (got.details["tp"], got.details["fp"], got.details["fn"], got.details["tn"]) == (tp, fp, fn, tn)
            want = {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
                    "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None}
            assert got.metrics == pytest.approx(want)


@pytest.mark.parametrize("seed", range(4))
def test_the_explanation_is_what_its_definition_says(seed):
    rng = random.Random(100 + seed)
    r = random_record(rng, 0)
    found = n2g_patterns(r)
    train = [*r.train, *r.train_negatives]
    ev = Evidence(train)
    for p, hits, matches in found:  # the comments' counts, recounted by brute force, at precision >= 0.5
        assert ev.counts(p) == (hits, matches)
        ms = [(e, i) for e in train for i in range(len(e.tokens)) if brute_matches(p, e.tokens, i)]
        assert matches == len(ms) and hits == sum(e.activations[i] > 0 for e, i in ms) and hits / matches >= 0.5
    patterns = [p for p, _, _ in found]
    assert not any(q != p and generalises(q, p) for q in patterns for p in patterns)  # the trie is minimal
    # the planted rule: " d" always fires, "b" after "a" always fires
    assert ("a", "b") in patterns or ("b",) in patterns
    assert (" d",) in patterns


# ---- registry and aggregation -----------------------------------------------------------------------------------

def test_docstrings_match_the_catalogue_and_both_are_registered():
    catalogue = yaml.safe_load((Path(__file__).parents[2] / "registry.yaml").read_text())["plugins"]
    want = {(p["kind"], p["name"]): p["description"] for p in catalogue}
    assert plugin_manager.describe(N2GExplainer) == want[("explainer", "n2g")]
    assert plugin_manager.describe(N2GScorer) == want[("scorer", "n2g")]
    assert plugin_manager.get("explainer", "n2g") is N2GExplainer and plugin_manager.get("scorer", "n2g") is N2GScorer
    assert not N2GExplainer.needs_llm and not N2GScorer.needs_llm and N2GScorer.family == "interp"


def test_units_are_per_latent_means_of_each_metric():
    rng = random.Random(7)
    records = [random_record(rng, latent) for latent in range(6)]
    scores = [score(r, explain(r).text) for r in records] + [score(records[0], "prose")]
    scores[-1].latent = 99
    scorer = N2GScorer()
    units, agg = scorer.units(scores), scorer.aggregate(scores)
    assert units.unit == "latent" and units.ids == [0, 1, 2, 3, 4, 5, 99]
    assert set(units.metrics) == {"precision", "recall", "f1"}
    for m in units.metrics:
        assert units.value(m) == pytest.approx(agg[m])


def test_bad_options_are_config_errors():
    from saebench.errors import ConfigError

    for bad in ({"max_context": -1}, {"min_precision": 2}, {"pivots": "some"}, {"nope": 1}):
        with pytest.raises(ConfigError):
            N2GExplainer(**bad)


# ---- one matrix -------------------------------------------------------------------------------------------------

def test_a_matrix_with_the_n2g_explainer_and_scorer(tmp_path, tiny_llama, tiny_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saebench.save_sae(firing_sae(d_in=32), tmp_path / "sae")
    matrix = {
        "name": "n2g", "output": "runs/n2g",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 64},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [{"name": "relu", "model": "tiny", "hookpoint": "layers.1", "path": "sae"}],
        "explainers": ["n2g", "top-tokens"],
        "scorers": ["n2g"],
        "interp": {"latents": 8, "seed": 0, "window": 16, "n_train": 6, "n_test": 6, "n_negatives": 6,
                   "min_activating": 4},
    }
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    report = run_matrix(tmp_path)
    assert report.exit_code == 0 and not report.failed
    out = tmp_path / "runs" / "n2g"
    [row] = list(csv.DictReader(io.StringIO(render(out, "csv"))))
    n = int(float(row["explain[n2g].explained"]))
    assert n > 0 and float(row["n2g[n2g].latents_scored"]) == n and float(row["n2g[n2g].parse_failures"]) == 0
    assert 0 <= float(row["n2g[n2g].f1"]) <= 1 and float(row["explain[n2g].prompt_tokens"]) == 0
    # top-tokens' explanations are not N2G patterns: every one is a parse failure, and no metric is made up
    assert float(row["n2g[top-tokens].parse_failures"]) == float(row["explain[top-tokens].explained"])
    assert row["n2g[top-tokens].f1"] == ""
    per_latent = list(csv.DictReader(io.StringIO(render(out, "csv", latents=True))))
    assert all(r["explain[n2g]"].startswith("N2G patterns:") for r in per_latent)
    f1s = [float(r["n2g[n2g].f1"]) for r in per_latent if r["n2g[n2g].f1"]]
    assert sum(f1s) / len(f1s) == pytest.approx(float(row["n2g[n2g].f1"]))
    [by_column] = StoredUnits.load(out).by_sae.values()
    assert {"n2g[n2g].precision", "n2g[n2g].recall", "n2g[n2g].f1"} <= set(by_column)
    [ivs] = intervals(StoredUnits.load(out), ["n2g[n2g].f1"], resamples=200).values()
    iv = ivs["n2g[n2g].f1"]
    assert iv.unit == "latent" and iv.units == n and iv.point == pytest.approx(float(row["n2g[n2g].f1"]))
    assert iv.low <= iv.point <= iv.high
