"""Detection, fuzzing and simulation against scripted judges whose answers fix every metric."""

import asyncio
import json
import math
import random
import re

import numpy as np
import pytest

from saebench.errors import ConfigError
from saebench.interfaces import InterpContext
from saebench.interp.llm import LLMResponse, TokenLogprob
from saebench.interp.prompts import find_int_list, parse_binary_list, parse_int_list, parse_yes_no, prob_one, prob_yes
from saebench.interp.types import Example, Explanation, LatentRecord
from saebench.metrics import roc_auc
from saebench.plugins.scorers.detection import YES_NO_TOKENS, DetectionScorer
from saebench.plugins.scorers.fuzzing import FuzzingScorer
from saebench.plugins.scorers.simulation import SimulationScorer
from scripted import ScriptedLLM

EXPLANATION = Explanation(latent=3, explainer="test", text="the word cat")


def judge_record(n_test=10, n_neg=10):
    """Activating windows hold " cat" (the only active token); negatives never do. Tags w<window> are unique."""
    test = [Example(tokens=[f"w{100 + i}", " the", " cat", " sat", " on", " a", " mat"],
                    activations=[0, 0, 1.0 + i, 0, 0, 0, 0], window=100 + i, quantile=i % 3) for i in range(n_test)]
    neg = [Example(tokens=[f"w{200 + i}", " the", " dog", " ran", " to", " a", " park"], activations=[0.0] * 7,
                   window=200 + i, kind="random") for i in range(n_neg)]
    return LatentRecord(latent=3, n_activating=n_test, density=0.01, max_activation=float(n_test), test=test,
                        test_negatives=neg)


def tag(line):
    """The window number of an excerpt (its tag may be marked, as in <<w200>>)."""
    return int(re.search(r"w(\d+)", line).group(1))


def excerpts(request):
    return re.findall(r"^\d+\. (.*)$", request.messages[-1]["content"], re.M)


def detect_truth(line):
    return int(" cat" in line)


def fuzz_truth(line):
    spans = re.findall(r"<<(.*?)>>", line)
    return int(bool(spans) and all(s == "cat" for s in spans))


def answer_with(rule):
    return lambda request: "[" + ", ".join(str(rule(x)) for x in excerpts(request)) + "]"


def score(scorer, answer, record=None, seed=0):
    llm = ScriptedLLM(answer)
    ctx = InterpContext(sae=None, hookpoint="layers.0", llm=llm, seed=seed)
    return asyncio.run(scorer.score_latent(record or judge_record(), EXPLANATION, ctx)), llm


SCORERS = [(DetectionScorer, detect_truth, 10, 10), (FuzzingScorer, fuzz_truth, 10, 20)]  # (cls, truth, pos, neg)


# ---- parsing helpers ---------------------------------------------------------------------------

def test_list_parsing_is_strict():
    assert parse_binary_list("Sure: [1, 0,1]", 3) == [1, 0, 1]
    assert parse_binary_list("[1, 0] then [0, 0, 1]", 3) == [0, 0, 1]  # the last list is the answer
    assert parse_binary_list("[1, 0]", 3) is None
    assert parse_binary_list("[1, 2, 0]", 3) is None
    assert parse_binary_list("1, 0, 1", 3) is None
    assert parse_binary_list("[yes, no, yes]", 3) is None
    assert parse_int_list("[0, 10, 3]", 3, 0, 10) == [0, 10, 3]
    assert parse_int_list("[0, 11, 3]", 3, 0, 10) is None
    assert find_int_list("ab[1, 10]") == ([1, 10], [3, 7])


def test_prob_one_reads_digit_alternatives():
    toks = [TokenLogprob(token="[1", logprob=math.log(0.7), top={"[1": math.log(0.7), "[0": math.log(0.1)}),
            TokenLogprob(token=",", logprob=0.0),
            TokenLogprob(token=" 0", logprob=math.log(0.6), top={" 0": math.log(0.6), " 1": math.log(0.2),
                                                                  "0": math.log(0.2), " yes": math.log(0.1)}),
            TokenLogprob(token="]", logprob=0.0)]
    response = LLMResponse(text="[1, 0]", logprobs=toks)
    assert prob_one(response, find_int_list(response.text)[1]) == pytest.approx([0.7 / 0.8, 0.2 / 1.0])
    misaligned = response.model_copy(update={"text": " [1, 0]"})
    assert prob_one(misaligned, [2, 5]) == [None, None]


# ---- detection and fuzzing ---------------------------------------------------------------------

@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_all_yes_judge(cls, truth, n_pos, n_neg):
    result, llm = score(cls(), lambda r: "[" + ", ".join("1" for _ in excerpts(r)) + "]")
    m = result.metrics
    assert m["balanced_accuracy"] == 0.5 and m["recall"] == 1.0
    assert m["precision"] == pytest.approx(n_pos / (n_pos + n_neg))
    assert m["auc"] is None and result.parse_failures == 0
    assert len(llm.requests) == math.ceil((n_pos + n_neg) / 5)
    assert all(len(excerpts(r)) <= 5 for r in llm.requests)


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_perfect_and_inverted_judges(cls, truth, n_pos, n_neg):
    result, _ = score(cls(), answer_with(truth))
    assert {k: result.metrics[k] for k in ("balanced_accuracy", "accuracy", "precision", "recall", "f1")} == \
        dict.fromkeys(("balanced_accuracy", "accuracy", "precision", "recall", "f1"), 1.0)
    assert sorted(r["label"] for r in result.details["examples"]) == [0] * n_neg + [1] * n_pos
    assert result.details["recall_by_quantile"] == {"0": 1.0, "1": 1.0, "2": 1.0}
    inverted, _ = score(cls(), answer_with(lambda x: 1 - truth(x)))
    m = inverted.metrics
    assert (m["balanced_accuracy"], m["accuracy"], m["recall"], m["precision"], m["f1"]) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_garbage_answers_are_parse_failures_not_scores(cls, truth, n_pos, n_neg):
    result, llm = score(cls(), lambda r: "The first and third look right.")
    assert result.parse_failures == len(llm.requests) > 0
    assert result.metrics == dict.fromkeys(("balanced_accuracy", "accuracy", "precision", "recall", "f1", "auc"))


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_wrong_length_excludes_that_prompt(cls, truth, n_pos, n_neg):
    calls = []

    def answer(request):
        calls.append(request)
        shown = [truth(x) for x in excerpts(request)]
        return str(shown[:-1] if len(calls) == 1 else shown)  # only the first prompt is answered short

    result, llm = score(cls(), answer)
    assert result.parse_failures == 1
    assert len(result.details["examples"]) == n_pos + n_neg - len(excerpts(llm.requests[0]))
    assert result.metrics["balanced_accuracy"] == 1.0


def logprob_answer(truth, p_of):
    """A 0/1 list answer with top logprobs; p_of(line) is P("1") at that line's digit."""
    def answer(request):
        assert request.top_logprobs == 5
        toks = [TokenLogprob(token="[", logprob=0.0)]
        for i, line in enumerate(excerpts(request)):
            sp = " " if i else ""
            p, d = p_of(line), str(truth(line))
            top = {sp + "1": math.log(p), sp + "0": math.log(1 - p)}
            if i:
                toks.append(TokenLogprob(token=",", logprob=0.0))
            toks.append(TokenLogprob(token=sp + d, logprob=top[sp + d], top=top))  # " 1": a space-led digit
        toks.append(TokenLogprob(token="]", logprob=0.0))
        return LLMResponse(text="".join(t.token for t in toks), logprobs=toks)
    return answer


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_auc_from_logprobs(cls, truth, n_pos, n_neg):
    # P("1"): positives 0.8; negatives 0.2, except w200 (0.9, above every positive) and w201 (0.8, a tie)
    special = {200: 0.9, 201: 0.8}
    p_of = lambda label, window: 0.8 if label else special.get(window, 0.2)
    result, _ = score(cls(logprobs=True), logprob_answer(truth, lambda line: p_of(truth(line), tag(line))))
    rows = result.details["examples"]
    assert [r["p1"] for r in rows] == pytest.approx([p_of(r["label"], r["window"]) for r in rows])
    # each positive outranks every negative but w200 (a loss) and w201 (a tie, half)
    assert result.metrics["auc"] == pytest.approx(1 - 1.5 / n_neg)
    assert result.metrics["auc"] == pytest.approx(roc_auc([r["label"] for r in rows], [r["p1"] for r in rows]))
    assert result.metrics["balanced_accuracy"] == 1.0


def test_logprobs_missing_or_misaligned_give_no_auc():
    result, llm = score(DetectionScorer(), answer_with(detect_truth))
    assert llm.requests[0].top_logprobs == 0 and result.metrics["auc"] is None

    def shifted(request):
        response = logprob_answer(detect_truth, lambda line: 0.7)(request)
        return response.model_copy(update={"text": " " + response.text})

    result, _ = score(DetectionScorer(logprobs=True), shifted)
    assert result.metrics["auc"] is None and result.metrics["balanced_accuracy"] == 1.0


def test_usage_is_summed_and_unknown_cost_stays_unknown():
    priced = lambda r: LLMResponse(text=answer_with(detect_truth)(r), prompt_tokens=10, completion_tokens=3,
                                   cost_usd=0.001)
    result, llm = score(DetectionScorer(), priced)
    n = len(llm.requests)
    assert (result.prompt_tokens, result.completion_tokens) == (10 * n, 3 * n)
    assert result.cost_usd == pytest.approx(0.001 * n)
    one_unpriced = lambda r: priced(r) if "w100 " not in r.messages[-1]["content"] else LLMResponse(text="[]")
    result, _ = score(DetectionScorer(), one_unpriced)
    assert result.cost_usd is None and result.parse_failures == 1


def test_shuffling_is_seeded_and_caps_apply():
    _, a = score(DetectionScorer(n_activating=4, n_negatives=3), answer_with(detect_truth), seed=1)
    _, b = score(DetectionScorer(n_activating=4, n_negatives=3), answer_with(detect_truth), seed=1)
    _, c = score(DetectionScorer(n_activating=4, n_negatives=3), answer_with(detect_truth), seed=2)
    order = lambda llm: [x for r in llm.requests for x in excerpts(r)]
    assert order(a) == order(b) != order(c) and len(order(a)) == 7
    assert sorted(order(a)) == sorted(order(c))


def test_fuzzing_marks_as_many_wrong_tokens_as_right_ones():
    result, llm = score(FuzzingScorer(), answer_with(fuzz_truth))
    shown = [x for r in llm.requests for x in excerpts(r)]
    for i in range(10):
        versions = [x for x in shown if tag(x) == 100 + i]
        spans = sorted(re.findall(r"<<(.*?)>>", v) for v in versions)
        assert len(versions) == 2 and ["cat"] in spans and len(spans[0]) == len(spans[1]) == 1
    negatives = [x for x in shown if tag(x) >= 200]
    assert len(negatives) == 10 and all(len(re.findall(r"<<", x)) == 1 for x in negatives)
    kinds = sorted({r["kind"] for r in result.details["examples"]})
    assert kinds == ["activating", "misplaced", "random"]


def test_detection_prompt_size_estimate():
    """5 windows of 32 tokens per prompt, as delphi's detection prompt (it reports ~778 prompt tokens)."""
    rng = random.Random(0)
    words = "the a of to in is that for it as with was on be by this are from at or an".split()
    test = [Example(tokens=[" " + rng.choice(words) for _ in range(32)], activations=[1.0] * 32, window=i)
            for i in range(5)]
    rec = LatentRecord(latent=3, n_activating=5, density=0.1, max_activation=1.0, test=test)
    _, llm = score(DetectionScorer(), lambda r: "[1, 1, 1, 1, 1]", record=rec)
    chars = sum(len(m["content"]) for m in llm.requests[0].messages)
    print(f"\ndetection prompt, 5 examples × 32 tokens: {chars} chars ≈ {chars / 4:.0f} tokens")
    assert 500 < chars < 2000


# ---- one excerpt per prompt: a Yes/No answer ---------------------------------------------------

@pytest.mark.parametrize("answer, expected", [
    ("Yes", 1), ("yes.", 1), ("YES, the cat is there", 1), ("  1", 1), ("1.", 1),
    ("No.", 0), ("no!", 0), ("No. The excerpt has no cat", 0), ("0", 0),
    ("Maybe", None), ("**Yes**", None), ("Yesterday", None), ("The answer is yes", None), ("10", None), ("", None),
])
def test_yes_no_reads_only_the_first_word(answer, expected):
    assert parse_yes_no(answer) == expected


def test_prob_yes_sums_spellings_of_each_word():
    top = {" Yes": math.log(0.3), "yes": math.log(0.1), "No": math.log(0.2), " NO": math.log(0.2),
           "Maybe": math.log(0.15), "Yes.": math.log(0.05)}  # "Yes." is no yes: only spaces are stripped
    first = TokenLogprob(token="No", logprob=math.log(0.2), top=top)
    response = LLMResponse(text="No. It is not", logprobs=[first, TokenLogprob(token=".", logprob=0.0)])
    assert prob_yes(response) == pytest.approx(0.4 / 0.8)
    # the generated token counts when the alternatives leave it out
    alone = LLMResponse(text="Yes", logprobs=[TokenLogprob(token="Yes", logprob=math.log(0.6), top={"No": math.log(0.2)})])
    assert prob_yes(alone) == pytest.approx(0.75)
    assert prob_yes(LLMResponse(text="Yes")) is None
    neither = LLMResponse(text="Sure", logprobs=[TokenLogprob(token="Sure", logprob=0.0, top={"The": -1.0})])
    assert prob_yes(neither) is None


def excerpt(request):
    """The one excerpt of a Yes/No prompt."""
    return re.fullmatch(r"Explanation: the word cat\n\nExcerpt: (.*)\n\n.*\? Reply with one word: Yes or No\.",
                        request.messages[-1]["content"]).group(1)


#: answers a judge may give, all parsed: the window number picks one
SPELLINGS = {1: ("Yes.", "yes, there is a cat", "1", "YES"), 0: ("No.", "no", "0", "No! Not at all")}


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_one_excerpt_all_yes_judge(cls, truth, n_pos, n_neg):
    result, llm = score(cls(examples_per_prompt=1), lambda r: "Yes")
    m = result.metrics
    assert m["balanced_accuracy"] == 0.5 and m["recall"] == 1.0 and m["auc"] is None
    assert m["precision"] == pytest.approx(n_pos / (n_pos + n_neg))
    assert result.parse_failures == 0 and len(llm.requests) == n_pos + n_neg == result.details["prompts"]
    assert sorted(tag(excerpt(r)) for r in llm.requests) == sorted(r["window"] for r in result.details["examples"])
    assert all(r.max_tokens == YES_NO_TOKENS and r.top_logprobs == 0 for r in llm.requests)
    assert llm.requests[0].messages[0]["content"] != cls.SYSTEM  # not the list instructions


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_one_excerpt_perfect_and_inverted_judges(cls, truth, n_pos, n_neg):
    right = lambda r: SPELLINGS[truth(excerpt(r))][tag(excerpt(r)) % 4]
    result, _ = score(cls(examples_per_prompt=1), right)
    assert result.parse_failures == 0 and len(result.details["examples"]) == n_pos + n_neg
    assert {k: result.metrics[k] for k in ("balanced_accuracy", "accuracy", "precision", "recall", "f1")} == \
        dict.fromkeys(("balanced_accuracy", "accuracy", "precision", "recall", "f1"), 1.0)
    wrong = lambda r: SPELLINGS[1 - truth(excerpt(r))][tag(excerpt(r)) % 4]
    inverted, _ = score(cls(examples_per_prompt=1), wrong)
    assert inverted.metrics["balanced_accuracy"] == 0.0 and inverted.metrics["recall"] == 0.0


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_one_excerpt_garbage_first_word_is_a_parse_failure(cls, truth, n_pos, n_neg):
    garbage = ("Maybe yes", "**Yes**", "Yesterday", "The excerpt: yes", "")
    result, llm = score(cls(examples_per_prompt=1), lambda r: garbage[tag(excerpt(r)) % 5])
    assert result.parse_failures == len(llm.requests) == n_pos + n_neg
    assert result.metrics == dict.fromkeys(("balanced_accuracy", "accuracy", "precision", "recall", "f1", "auc"))
    # one unparsable answer excludes only its own excerpt (w205, a negative, is shown once by both scorers)
    one_bad = lambda r: "Maybe" if tag(excerpt(r)) == 205 else SPELLINGS[truth(excerpt(r))][0]
    result, _ = score(cls(examples_per_prompt=1), one_bad)
    assert result.parse_failures == 1 and len(result.details["examples"]) == n_pos + n_neg - 1
    assert 205 not in [r["window"] for r in result.details["examples"]]
    assert result.metrics["balanced_accuracy"] == 1.0


@pytest.mark.parametrize("cls, truth, n_pos, n_neg", SCORERS)
def test_one_excerpt_auc_from_yes_no_logprobs(cls, truth, n_pos, n_neg):
    def answer(request):
        assert request.top_logprobs == 5
        x = excerpt(request)
        w, label = tag(x), truth(x)
        if w == 205:  # the first token is a newline, neither word among its alternatives: parsed, but no p1
            toks = [TokenLogprob(token="\n", logprob=-0.1, top={"The": -2.0}), TokenLogprob(token="No", logprob=0.0)]
            return LLMResponse(text="\nNo", logprobs=toks)
        # masses " Yes" a, "yes" a/2, "No" b, "Maybe" 0.1 (ignored): P(Yes) = 1.5a / (1.5a + b), and the
        # positives' range (0.50-0.70) overlaps the negatives' (0.23-0.75), so the AUC is neither 0.5 nor 1
        a, b = (0.2 + 0.03 * (w % 10), 0.3) if label else (0.1, 0.05 + 0.05 * (w % 10))
        top = {" Yes": math.log(a), "yes": math.log(a / 2), "No": math.log(b), "Maybe": math.log(0.1)}
        word = " Yes" if 1.5 * a > b else "No"
        return LLMResponse(text=word + ". Because", logprobs=[TokenLogprob(token=word, logprob=top[word], top=top)])

    result, _ = score(cls(examples_per_prompt=1, logprobs=True), answer)
    rows = result.details["examples"]
    assert result.parse_failures == 0 and len(rows) == n_pos + n_neg

    def by_hand(row):
        w = row["window"]
        if w == 205:
            return None
        a, b = (0.2 + 0.03 * (w % 10), 0.3) if row["label"] else (0.1, 0.05 + 0.05 * (w % 10))
        return 1.5 * a / (1.5 * a + b)

    expected = [by_hand(r) for r in rows]
    assert [r["p1"] for r in rows] == pytest.approx(expected)
    assert sum(p is None for p in expected) == 1
    scored = [(r["label"], p) for r, p in zip(rows, expected) if p is not None]
    auc = roc_auc([l for l, _ in scored], [p for _, p in scored])
    assert 0.5 < auc < 1 and result.metrics["auc"] == pytest.approx(auc)


def test_a_short_last_batch_keeps_the_list_format():
    result, llm = score(DetectionScorer(n_activating=6, n_negatives=5), answer_with(detect_truth))
    assert [len(excerpts(r)) for r in llm.requests] == [5, 5, 1]
    assert result.parse_failures == 0 and result.metrics["balanced_accuracy"] == 1.0


# ---- simulation --------------------------------------------------------------------------------

def sim_record(n_test=5, n_neg=4):
    # cat = a, sat = a/2, record max 5: scaled to 0-10 these are exactly 2a and a (integers)
    test = [Example(tokens=[f"w{100 + i}", " the", " cat", " sat", " on"], activations=[0, 0, i + 1.0, (i + 1) / 2, 0],
                    window=100 + i, quantile=i) for i in range(n_test)]
    neg = [Example(tokens=[f"w{200 + i}", " a", " dog"], activations=[0.0] * 3, window=200 + i, kind="random")
           for i in range(n_neg)]
    return LatentRecord(latent=3, n_activating=n_test, density=0.01, max_activation=5.0, test=test, test_negatives=neg)


def shown_example(request, record):
    tokens = json.loads(re.search(r"Tokens \(\d+\): (\[.*\])", request.messages[-1]["content"]).group(1))
    window = int(tokens[0][1:])
    return next(e for e in record.test + record.test_negatives if e.window == window), tokens


def sim_answer(record, predict):
    def answer(request):
        example, tokens = shown_example(request, record)
        assert tokens == example.tokens
        return json.dumps(predict(example))
    return answer


def test_simulation_perfect_judge_correlates_one_and_picks_a_mix():
    rec = sim_record()
    truth = lambda e: [round(10 * a / rec.max_activation) for a in e.activations]
    result, llm = score(SimulationScorer(), sim_answer(rec, truth), record=rec)
    assert result.metrics["correlation"] == pytest.approx(1.0)
    assert result.metrics["correlation_per_example"] == pytest.approx(1.0)
    windows = [r["window"] for r in result.details["examples"]]
    # 6 = 2 negatives + 2 strongest (w104, w103) + 2 drawn from the other activating ones
    assert windows[:2] == [104, 103] and all(100 <= w < 103 for w in windows[2:4])
    assert all(w >= 200 for w in windows[4:]) and len(set(windows)) == 6
    assert result.parse_failures == 0 and len(llm.requests) == 6


def test_simulation_constant_judge_is_undefined_not_zero():
    rec = sim_record()
    result, _ = score(SimulationScorer(), sim_answer(rec, lambda e: [3] * len(e.tokens)), record=rec)
    assert result.metrics == {"correlation": None, "correlation_per_example": None}
    assert result.parse_failures == 0


def test_simulation_matches_numpy_on_arbitrary_predictions():
    rec = sim_record()
    guess = lambda e: [random.Random(e.window * 7 + i).randint(0, 10) for i in range(len(e.tokens))]
    result, _ = score(SimulationScorer(n_examples=9), sim_answer(rec, guess), record=rec)
    chosen = [next(e for e in rec.test + rec.test_negatives if e.window == r["window"])
              for r in result.details["examples"]]
    pred = np.concatenate([guess(e) for e in chosen]).astype(np.float64)
    true = np.concatenate([e.activations for e in chosen])
    assert result.metrics["correlation"] == pytest.approx(np.corrcoef(pred, true)[0, 1], abs=1e-12)
    per = [np.corrcoef(guess(e), e.activations)[0, 1] for e in chosen if e.kind == "activating"]
    assert result.metrics["correlation_per_example"] == pytest.approx(np.mean(per), abs=1e-12)


def test_simulation_wrong_length_is_a_parse_failure():
    rec = sim_record()
    truth = lambda e: [round(2 * a) for a in e.activations][: -1 if e.window == 104 else None]
    result, _ = score(SimulationScorer(), sim_answer(rec, truth), record=rec)
    assert result.parse_failures == 1 and result.metrics["correlation"] == pytest.approx(1.0)
    assert [r["predicted"] is None for r in result.details["examples"]].count(True) == 1


def lines_response(lines):
    """``token<TAB>digit`` lines with top logprobs at each digit: lines = [(token, {digit: p})]."""
    toks = []
    for token, probs in lines:
        top = {d: math.log(p) for d, p in probs.items()}
        best = max(probs, key=probs.get)
        toks += [TokenLogprob(token=token, logprob=0.0), TokenLogprob(token="\t", logprob=0.0),
                 TokenLogprob(token=best, logprob=top[best], top=top), TokenLogprob(token="\n", logprob=0.0)]
    return LLMResponse(text="".join(t.token for t in toks), logprobs=toks)


def test_simulation_logprob_mode_expected_values_by_hand():
    ex = Example(tokens=["w1", " a", " b"], activations=[0.0, 1.0, 3.0], window=1)
    rec = LatentRecord(latent=3, n_activating=1, density=0.1, max_activation=3.0, test=[ex])
    lines = [("w1", {"0": 1.0}), (" a", {"5": 0.5, "3": 0.25, "x": 0.25}), (" b", {"9": 0.6, "8": 0.2, "10": 0.2})]
    result, llm = score(SimulationScorer(n_examples=1, mode="logprobs"), lambda r: lines_response(lines), record=rec)
    assert llm.requests[0].top_logprobs > 0
    # 0; (5·.5 + 3·.25)/.75 = 13/3 ("x" is no digit); (9·.6 + 8·.2)/.8 = 8.75 ("10" is not one digit)
    predicted = result.details["examples"][0]["predicted"]
    assert predicted == pytest.approx([0.0, 13 / 3, 8.75])
    x, y = np.array([0.0, 13 / 3, 8.75]), np.array([0.0, 1.0, 3.0])
    r = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert result.metrics["correlation"] == pytest.approx(r)

    missing, _ = score(SimulationScorer(n_examples=1, mode="logprobs"), lambda r: lines_response(lines[:2]), record=rec)
    no_lp, _ = score(SimulationScorer(n_examples=1, mode="logprobs"), lambda r: "w1\t0\n a\t5\n b\t9\n", record=rec)
    for bad in (missing, no_lp):
        assert bad.parse_failures == 1 and bad.metrics["correlation"] is None


def test_simulation_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="mode"):
        SimulationScorer(mode="vibes")


def test_docstrings_match_the_catalogue():
    from pathlib import Path

    import yaml

    from saebench import plugin_manager

    catalogue = yaml.safe_load((Path(__file__).parents[2] / "registry.yaml").read_text())["plugins"]
    described = {p["name"]: p["description"] for p in catalogue if p["kind"] == "scorer"}
    for cls in (DetectionScorer, FuzzingScorer, SimulationScorer):
        assert plugin_manager.describe(cls) == described[cls.name]
