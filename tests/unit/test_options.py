"""Plugin options as pydantic models: strict parsing, one-line errors naming the option, generated documentation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field, ValidationError

import saebench
from saebench import plugin_manager
from saebench.options import describe

SAEBENCH = Path(sys.executable).parent / "saebench"


class Example(saebench.Options):
    tokens: int = Field(4096, ge=1, description="tokens to read")
    rate: float = Field(0.5, gt=0, le=1, description="a share")
    label: str | None = Field(None, description="a name, or none")
    flag: bool = False


def test_defaults_and_good_values():
    o = Example.parse({}, "scorer x")
    assert (o.tokens, o.rate, o.label, o.flag) == (4096, 0.5, None, False)
    o = Example.parse({"tokens": 7, "rate": 1, "label": "a", "flag": True}, "scorer x")
    assert (o.tokens, o.rate, o.label, o.flag) == (7, 1.0, "a", True) and isinstance(o.rate, float)
    assert o.as_dict() == {"tokens": 7, "rate": 1.0, "label": "a", "flag": True}


@pytest.mark.parametrize(
    "given,words",
    [
        ({"tokenz": 1}, ["unknown option 'tokenz'", "valid options: tokens, rate, label, flag"]),
        ({"tokens": True}, ["option 'tokens'", "bool True"]),  # a bool is not an int
        ({"tokens": "64"}, ["option 'tokens'", "str '64'"]),  # nor is a string of digits
        ({"tokens": 0}, ["option 'tokens'", "greater than or equal to 1", "int 0"]),
        ({"rate": 1.5}, ["option 'rate'", "less than or equal to 1"]),
        ({"flag": "yes"}, ["option 'flag'"]),
    ],
)
def test_bad_values_are_one_line_config_errors_naming_the_option(given, words):
    with pytest.raises(saebench.ConfigError) as err:
        Example.parse(given, "scorer x")
    message = str(err.value)
    assert message.startswith("scorer x: ") and "\n" not in message
    for word in words:
        assert word in message


def test_nested_locations_name_the_key():
    with pytest.raises(saebench.ConfigError) as err:
        Example.parse({"tokenz": 1}, "data", nest=True)
    assert err.value.where == "data.tokenz"


def test_options_are_frozen():
    with pytest.raises(ValidationError):
        Example.parse({}, "x").tokens = 3


def test_describe_comes_from_the_model():
    rows = {r["name"]: r for r in describe(Example)}
    assert rows["tokens"] == {
        "name": "tokens",
        "type": "int",
        "default": "4096",
        "constraints": ">= 1",
        "description": "tokens to read",
    }
    assert rows["rate"]["constraints"] == "> 0, <= 1" and rows["label"]["type"] == "str | None"
    assert rows["flag"]["description"] == ""


def test_every_builtin_plugin_with_options_describes_each_one():
    for info in plugin_manager.get_registry().all():
        options = getattr(info.obj, "Options", None)
        if options is None:
            continue
        assert issubclass(options, saebench.Options), info
        for row in describe(options):
            assert row["description"], f"{info.kind} {info.name}: option {row['name']} has no description"


def test_plugins_options_command_prints_the_table():
    out = subprocess.run(
        [str(SAEBENCH), "plugins", "--options", "downstream"], capture_output=True, text=True, check=True
    ).stdout
    assert "scorer downstream:" in out and "tokens" in out and "batch_contexts" in out and ">= 1" in out
    both = json.loads(
        subprocess.run(
            [str(SAEBENCH), "plugins", "--options", "openai", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert {b["kind"] for b in both} == {"loader", "llm_client"}  # one name, two kinds
    client = next(b for b in both if b["kind"] == "llm_client")
    assert {"model", "max_concurrency", "base_url"} <= {o["name"] for o in client["options"]}
    bad = subprocess.run([str(SAEBENCH), "plugins", "--options", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
