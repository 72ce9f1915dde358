"""A site maps its own codes (issue 11 point 6): ``codes.pain_score`` and ``codes.reps_to_failure`` may be
a list of codings read alike; the prefetch templates ask for every one of them."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import RULES_DIR
from test_extract import CODES, LADDER, PID, bundle, pain_obs, round_obs

from cds import service
from cds.extract import extract
from cds.ruleset.loader import check_ruleset, load_ruleset

OTHER_PAIN = {"system": "http://loinc.org", "code": "38208-5"}


def _codes_with_pain_list():
    return CODES.model_copy(update={"pain_score": [CODES.pain_codes[0], CODES.pain_codes[0].model_copy(
        update={"code": OTHER_PAIN["code"]})]})


def test_a_pain_score_with_any_listed_code_is_read() -> None:
    other = pain_obs("pain-other-code", score=4)
    other["code"] = {"coding": [OTHER_PAIN]}
    prefetch = {"patient": {"resourceType": "Patient", "id": PID}, "conditions": None,
                "painScores": bundle(pain_obs("pain-1", score=1), other),
                "exerciseRounds": bundle(round_obs("r1", reps=20), round_obs("r2", reps=18))}
    one = extract(prefetch, patient_id=PID, codes=CODES, ladder=LADDER)
    assert [s.resource_id for s in one.skipped] == ["pain-other-code"]  # one code: the other is not a pain score
    assert one.latest_session is not None and one.latest_session.max_pain == 1
    many = extract(prefetch, patient_id=PID, codes=_codes_with_pain_list(), ladder=LADDER)
    assert many.skipped == () and many.latest_session is not None and many.latest_session.max_pain == 4


def test_prefetch_templates_ask_for_every_listed_code(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules, ignore=shutil.ignore_patterns("tests"))
    codes = rules / "codes.yaml"
    text = codes.read_text()
    start = text.index("  pain_score:")
    end = text.index("\n", start)
    codes.write_text(text[:start] + '  pain_score:\n    - {system: "http://loinc.org", code: "72514-3"}\n'
                     '    - {system: "http://loinc.org", code: "38208-5"}' + text[end:])
    assert check_ruleset(rules) == []
    templates = service.prefetch_templates(load_ruleset(rules))
    assert "&code=http://loinc.org|72514-3,http://loinc.org|38208-5&" in templates["painScores"]
