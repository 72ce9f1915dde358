"""fhir_examples/README.md's scenario table is built from these rule test cases (rules/tests/examples.yaml):
after changing a case's description or expected cards, run ``make examples`` to rebuild it.

Skipped in a copy of ``rules/`` that has no ``fhir_examples/`` beside it (the table is the repository's
documentation, not part of the rule set)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "fhir_examples" / "generate.py"


def test_the_examples_readme_table_is_built_from_these_cases() -> None:
    if not GENERATOR.exists():
        pytest.skip("no fhir_examples/generate.py beside this rules folder")
    gen = runpy.run_path(str(GENERATOR), run_name="fhir_examples_generate_readme")
    expected = gen["build_readme"](gen["load_anchor"](), gen["load_example_cases"]())
    readme = ROOT / "fhir_examples" / "README.md"
    assert readme.read_text(encoding="utf-8") == expected, (
        "fhir_examples/README.md no longer shows the cases of rules/tests/examples.yaml: run make examples"
    )
