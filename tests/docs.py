"""CONTRIBUTING.md's examples as modules, so that the tests run them exactly as printed (docs that cannot rot)."""

import re
import types
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def snippet_module(heading: str, name: str) -> types.ModuleType:
    """The first ```python block after the heading ``heading``, executed as the module ``name``."""
    text = DOC.read_text()
    section = text[text.index(heading):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType(name)
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module
