"""Explainers and the shared prompt helpers: what is shown, how it is marked, how answers are parsed."""

import asyncio
import random
from pathlib import Path

import pytest
import yaml

from saebench import plugin_manager
from saebench.errors import ConfigError
from saebench.interp.llm import LLMResponse
from saebench.interp.prompts import highlight, parse_explanation, spread
from saebench.interp.types import Example, LatentRecord
from saebench.plugins.explainers.contrastive import ContrastiveExplainer
from saebench.plugins.explainers.llm import REPLY, LLMExplainer
from saebench.plugins.explainers.top_tokens import TopTokensExplainer
from scripted import ScriptedLLM, prompt_text


def ex(tokens, acts, window, kind="activating", quantile=None):
    return Example(tokens=tokens, activations=acts, window=window, kind=kind, quantile=quantile)


def record(n_train=4, n_test=3, n_neg=3):
    """Every window's text starts with a unique tag ``w<window>``, so a prompt shows which it used."""
    w = iter(range(100, 200))
    act = lambda i: ex([f"w{next(w)}", " the", " Cat", " sat"], [0.0, 0.0, 1.0 + i, 0.0], 0)
    train = [act(i) for i in range(n_train)]
    test = [act(i) for i in range(n_test)]
    for e in train + test:
        e.window = int(e.tokens[0][1:])
    neg = lambda kind: ex([f"w{(n := next(w))}", " a", " dog"], [0.0] * 3, n, kind)
    train_neg = [neg("random"), neg("hard"), neg("random"), neg("hard")][:n_neg + 1]
    test_neg = [neg("random") for _ in range(n_neg)]
    top = float(max(n_train, n_test))
    return LatentRecord(latent=7, n_activating=n_train + n_test, density=0.01, max_activation=top,
                        train=train, test=test, train_negatives=train_neg, test_negatives=test_neg)


def run(explainer, rec, answer="[EXPLANATION]: the word cat"):
    llm = ScriptedLLM(answer if callable(answer) else (lambda r: answer))
    explainer.llm = llm
    return asyncio.run(explainer.explain(rec)), llm


# ---- shared formatting -------------------------------------------------------------------------

def test_highlight_marks_runs_at_or_above_threshold_with_spaces_outside():
    e = ex(["The", " cat", " sat", " on", " the", " mat", "\n"], [0, 1.0, 0.5, 0.2, 0, 0.3, 0], 0)
    # 0.3 is exactly 0.3 × max: included; 0.2 is not; newline escaped onto one line
    assert highlight(e) == "The <<cat sat>> on the <<mat>>\\n"
    assert highlight(e, threshold=0.6) == "The <<cat>> sat on the mat\\n"
    assert highlight(e, scale=2.0) == "The <<cat sat>> on the <<mat>>\\n\n   activations: cat=5, sat=2, mat=2"
    assert highlight(ex(["a", "b"], [0.0, 0.0], 1)) == "ab"  # a negative has nothing marked


def test_spread_keeps_strongest_and_weakest_in_order():
    es = [ex(["x"], [float(a)], a) for a in (3, 9, 1, 7, 5)]
    assert [e.window for e in spread(es, 3)] == [9, 5, 1]
    assert [e.window for e in spread(es, None)] == [9, 7, 5, 3, 1]


@pytest.mark.parametrize("answer, expected", [
    ("Thinking...\n[EXPLANATION]: verbs of motion\nmore", "verbs of motion"),
    ("[EXPLANATION]: first\n[EXPLANATION]: **second**", "second"),
    ("[EXPLANATION]:\n  the token 'cat'", "the token 'cat'"),
    ("verbs of motion", None),
    ("[EXPLANATION]:   ", None),
    ("[EXPLANATION]: ***", None),
    ('[EXPLANATION]: "quoted phrase"', "quoted phrase"),
    ("", None),
])
def test_parse_explanation(answer, expected):
    assert parse_explanation(answer) == expected


# ---- llm / contrastive -------------------------------------------------------------------------

def test_llm_prompt_shows_only_training_examples_marked():
    rec = record()
    explanation, llm = run(LLMExplainer(), rec)
    assert explanation.text == "the word cat" and explanation.failure is None
    prompt = prompt_text(llm.requests[0])
    for e in rec.train:
        assert f"{e.tokens[0]} the <<Cat>> sat" in prompt
    for e in rec.test + rec.test_negatives + rec.train_negatives:
        assert e.tokens[0] not in prompt
    assert "activations:" not in prompt
    assert llm.requests[0].temperature == 0.0


def test_llm_caps_examples_and_shows_values():
    rec = record(n_train=5)
    _, llm = run(LLMExplainer(n_examples=2, show_activations=True), rec)
    user = llm.requests[0].messages[-1]["content"]
    # the strongest (Cat=5, window of train[4]) and the weakest (Cat=1, train[0]) of max 5
    assert user == (f"Excerpts:\n1. {rec.train[4].tokens[0]} the <<Cat>> sat\n   activations: Cat=10\n"
                    f"2. {rec.train[0].tokens[0]} the <<Cat>> sat\n   activations: Cat=2\n\n"
                    "Reply with one line that starts with [EXPLANATION]:")


def test_contrastive_shows_hard_negatives_first_and_no_test_windows():
    rec = record()
    explanation, llm = run(ContrastiveExplainer(n_negatives=3), rec)
    assert explanation.text == "the word cat"
    user = llm.requests[0].messages[-1]["content"]
    fires, quiet = user.split("Does not fire on:\n")
    assert all(e.tokens[0] in fires for e in rec.train)
    hard = [e.tokens[0] for e in rec.train_negatives if e.kind == "hard"]
    rand = [e.tokens[0] for e in rec.train_negatives if e.kind == "random"]
    assert quiet == f"1. {hard[0]} a dog\n2. {hard[1]} a dog\n3. {rand[0]} a dog\n\n{REPLY}"
    for e in rec.test + rec.test_negatives:
        assert e.tokens[0] not in prompt_text(llm.requests[0])


@pytest.mark.parametrize("cls", [LLMExplainer, ContrastiveExplainer])
def test_unparsable_answer_is_a_failure_never_an_explanation(cls):
    explanation, _ = run(cls(), record(), answer="The feature is about cats.")
    assert explanation.text is None and explanation.parse_failures == 1
    assert explanation.failure == "unparsable answer: 'The feature is about cats.'"


@pytest.mark.parametrize("cls", [LLMExplainer, ContrastiveExplainer])
@pytest.mark.parametrize("show_activations", [False, True])
def test_worked_examples_have_the_question_format_and_the_reply_line_comes_last(cls, show_activations):
    _, llm = run(cls(show_activations=show_activations), record())
    messages = llm.requests[0].messages
    users = [m["content"] for m in messages if m["role"] == "user"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(users) == 4 and len(answers) == 3  # three worked examples, then the question
    head = "Excerpts:\n1. " if cls is LLMExplainer else "Fires on:\n1. "
    assert all(u.startswith(head) and u.endswith(f"\n\n{REPLY}") for u in users)
    assert all(a.startswith("[EXPLANATION]: ") for a in answers)
    # marked lines of the worked examples get activations lines exactly when the question's do
    for u in users:
        marked = [line for line in u.splitlines() if "<<" in line]
        assert u.count("   activations: ") == (len(marked) if show_activations else 0)
    assert "<phrase>" not in prompt_text(llm.requests[0])  # a placeholder small models copy as the answer


@pytest.mark.parametrize("cls", [LLMExplainer, ContrastiveExplainer])
def test_a_copied_worked_example_is_a_failure(cls):
    parrot = lambda r: r.messages[-2]["content"]  # the last worked answer, marker and all
    explanation, llm = run(cls(), record(), parrot)
    assert explanation.text is None and explanation.parse_failures == 1
    assert explanation.failure.startswith("answer copies a worked example: ")
    first = llm.requests[0].messages[2]["content"]  # the first worked answer, shouted and with a period
    explanation, _ = run(cls(), record(), lambda r: first.upper() + ".")
    assert explanation.text is None and explanation.failure.startswith("answer copies")
    # the same style about this latent's own tokens is an answer
    explanation, _ = run(cls(), record(), '[EXPLANATION]: the word "Cat": a capitalised animal noun')
    assert explanation.text == 'the word "Cat": a capitalised animal noun' and explanation.failure is None


def test_usage_is_copied_from_the_response():
    answer = lambda r: LLMResponse(text="[EXPLANATION]: cats", prompt_tokens=321, completion_tokens=9, cost_usd=0.002)
    explanation, _ = run(LLMExplainer(), record(), answer)
    assert (explanation.prompt_tokens, explanation.completion_tokens, explanation.cost_usd) == (321, 9, 0.002)
    explanation, _ = run(LLMExplainer(), record(), lambda r: LLMResponse(text="[EXPLANATION]: cats"))
    assert explanation.cost_usd is None  # unpriced stays unknown


def test_no_training_examples_fails_without_a_call():
    explanation, llm = run(LLMExplainer(), record(n_train=0))
    assert explanation.text is None and llm.requests == []


def test_bad_option_is_a_config_error():
    with pytest.raises(ConfigError, match="n_examples"):
        LLMExplainer(n_examples=0)


# ---- top-tokens --------------------------------------------------------------------------------

def test_top_tokens_counts_active_positions_casefolded():
    train = [ex(["def", " foo", "(", " Class", " "], [1.0, 0.0, 2.0, 0.5, 3.0], 1),
             ex([" def", " class", " return", "("], [0.1, 0.2, 0.3, 0.0], 2),
             ex(["DEF", " x"], [0.4, 0.0], 3)]
    rec = LatentRecord(latent=1, n_activating=3, density=0.1, max_activation=3.0, train=train,
                       test=[ex(["zzz"], [9.0], 4)])
    out = asyncio.run(TopTokensExplainer(n_tokens=3).explain(rec))
    # def ×3, class ×2, then "(" ×1 and "return" ×1 tie: alphabetical puts "(" first; " " is empty
    assert out.text == 'tokens: "def", "class", "("'
    assert out.failure is None and out.prompt_tokens == 0 and out.cost_usd == 0.0
    none = rec.model_copy(update={"train": [ex(["a"], [0.0], 5)]})
    failed = asyncio.run(TopTokensExplainer().explain(none))
    assert failed.text is None and failed.failure


def test_docstrings_match_the_catalogue():
    catalogue = yaml.safe_load((Path(__file__).parents[2] / "registry.yaml").read_text())["plugins"]
    described = {p["name"]: p["description"] for p in catalogue if p["kind"] == "explainer"}
    for cls in (LLMExplainer, ContrastiveExplainer, TopTokensExplainer):
        assert plugin_manager.describe(cls) == described[cls.name]


def test_prompt_size_estimate():
    """40 windows of 32 tokens, as delphi's explainer sees them (it reports ~963 prompt tokens)."""
    rng = random.Random(0)
    words = "the a of to in is that for it as with was on be by this are from at or an".split()
    train = []
    for w in range(40):
        acts = [0.0] * 32
        for i in rng.sample(range(32), 2):
            acts[i] = rng.uniform(1, 5)
        train.append(ex([" " + rng.choice(words) for _ in range(32)], acts, w))
    rec = LatentRecord(latent=0, n_activating=40, density=0.01, max_activation=5.0, train=train)
    for n in (40, 20):
        _, llm = run(LLMExplainer(n_examples=n), rec)
        chars = len(prompt_text(llm.requests[0]))
        print(f"\nexplanation prompt, {n} examples × 32 tokens: {chars} chars ≈ {chars / 4:.0f} tokens")
        assert 100 * n < chars < 300 * n
