"""Every example in docs/rule-authoring.md is applied to a copy of rules/ and its output checked.

The guide marks its examples with HTML comments just before a fenced block::

    <!-- example NAME: in rules/FILE, find -->      the block is text that occurs once in the file
    <!-- example NAME: replace with -->             ... and is replaced by this block
    <!-- example NAME: create rules/tests/F.yaml --> the block is a new file
    <!-- example NAME: run `cds ARGS`, which prints (exit N) -->
                                                    the command's output contains the block's lines
                                                    in order (``...`` stands for lines left out)
    <!-- example NAME: run `cds ARGS`, which prints exactly (exit N) -->
                                                    the command's output is the block, line for line,
                                                    once the lines the same command prints for the
                                                    unchanged rules (e.g. "rule set is valid", the
                                                    shipped warnings) are left out: what it prints
                                                    for the mistake, so a pasted message cannot go stale
    <!-- example NAME: commit rules in git -->      the block (shown to the reader) is done for real:
                                                    ``git init``, ``git add rules``, ``git commit``

The steps of one NAME run in order on a fresh copy of ``rules/`` and ``fhir_examples/``. The facts
table and the placeholder list are checked against the code (``FACT_FIELDS``, ``PLACEHOLDERS``).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from cds.assessment import FACT_FIELDS
from cds.cli import main
from cds.templates import PLACEHOLDERS

ROOT = Path(__file__).resolve().parents[2]  # the repository: the guide documents the shipped rules/
DOC = ROOT / "docs" / "rule-authoring.md"
TEXT = DOC.read_text()
STEP = re.compile(r"<!-- example (?P<name>[\w-]+): (?P<action>.*?) -->\n```\w*\n(?P<block>.*?)```", re.S)
KINDS = {bool: "yes/no", int: "whole number", float: "number", str: "ladder code"}


def steps() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for m in STEP.finditer(TEXT):
        out.setdefault(m["name"], []).append((m["action"], m["block"]))
    return out


def facts_table() -> str:
    rows = ["| fact | kind | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {KINDS[kind]} | {meaning} |" for name, (kind, meaning) in FACT_FIELDS.items()]
    return "\n".join(rows)


def between(marker: str) -> str:
    return TEXT.split(f"<!-- {marker} -->\n", 1)[1].split(f"\n<!-- /{marker} -->", 1)[0]


def test_facts_table_matches_the_code() -> None:
    assert between("facts-table") == facts_table()


def test_placeholder_list_matches_the_code() -> None:
    assert between("placeholders") == ", ".join(f"`{{{p}}}`" for p in sorted(PLACEHOLDERS))


def test_every_example_is_checked() -> None:
    assert TEXT.count("<!-- example ") == len(STEP.findall(TEXT))
    assert {"threshold", "site-code", "new-rule", "request-case", "typo", "evaluate"} <= set(steps())
    # the mistakes `cds rules check` explains, each with its exact output pasted (issue 9.2)
    mistakes = {"disclaimer-blank", "disclaimer-null", "literal-number", "yaml-indent", "yaml-tab", "yaml-quote",
                "condition-type", "since"}
    assert mistakes <= set(steps())
    for name in mistakes:
        assert any("which prints exactly" in action for action, _ in steps()[name]), name


def run_cds(args: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(shlex.split(args))
    return code, capsys.readouterr().out


def commit_rules(folder: Path) -> None:
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(folder), "-c", "user.name=docs", "-c", "user.email=docs@example.org", *args],
                       check=True, capture_output=True)

    if not (folder / ".git").exists():
        git("init", "-q")
    git("add", "rules")
    git("commit", "-q", "-m", "rules")


def contains_in_order(output: str, expected: str) -> None:
    lines = output.splitlines()
    pos = 0
    for want in expected.splitlines():
        if want.strip() == "...":
            continue
        try:
            pos = lines.index(want, pos) + 1
        except ValueError:
            pytest.fail(f"line not found (in order) in the output:\n{want}\n--- output ---\n{output}")


@pytest.mark.parametrize("name", sorted(steps()))
def test_doc_example(name: str, tmp_path: Path, monkeypatch, capsys) -> None:
    shutil.copytree(ROOT / "rules", tmp_path / "rules", ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    shutil.copytree(ROOT / "fhir_examples", tmp_path / "fhir_examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDS_RULES_DIR", raising=False)
    find: tuple[Path, str] | None = None
    baseline: dict[str, str] = {}  # what a command prints for the unchanged copy
    for action, _block in steps()[name]:
        if m := re.fullmatch(r"run `cds (.+)`, which prints exactly \(exit (\d+)\)", action):
            baseline.setdefault(m[1], "")
    if baseline:
        pristine = tmp_path / "pristine"
        shutil.copytree(tmp_path / "rules", pristine / "rules")
        monkeypatch.chdir(pristine)
        if any(action == "commit rules in git" for action, _ in steps()[name]):
            commit_rules(pristine)
        for args in baseline:
            baseline[args] = run_cds(args, capsys)[1]
        monkeypatch.chdir(tmp_path)
    for action, block in steps()[name]:
        if m := re.fullmatch(r"in (\S+), find", action):
            path = tmp_path / m[1]
            assert path.read_text().count(block) == 1, f"{name}: not found once in {m[1]}:\n{block}"
            find = (path, block)
        elif action == "replace with":
            assert find is not None, f"{name}: 'replace with' without 'find'"
            path, old = find
            path.write_text(path.read_text().replace(old, block))
            find = None
        elif m := re.fullmatch(r"create (\S+)", action):
            (tmp_path / m[1]).write_text(block)
        elif action == "commit rules in git":
            commit_rules(tmp_path)
        elif m := re.fullmatch(r"run `cds (.+)`, which prints exactly \(exit (\d+)\)", action):
            code, out = run_cds(m[1], capsys)
            assert code == int(m[2]), f"{name}: `cds {m[1]}` exited {code}\n{out}"
            unchanged = set(baseline[m[1]].splitlines())
            printed = [line for line in out.splitlines() if line not in unchanged]
            assert printed == block.splitlines(), f"{name}: `cds {m[1]}` prints, for this mistake:\n" + "\n".join(printed)
        elif m := re.fullmatch(r"run `cds (.+)`, which prints \(exit (\d+)\)", action):
            capsys.readouterr()
            code = main(shlex.split(m[1]))
            out = capsys.readouterr().out
            assert code == int(m[2]), f"{name}: `cds {m[1]}` exited {code}\n{out}"
            contains_in_order(out, block)
        else:
            pytest.fail(f"{name}: unknown example step {action!r}")
