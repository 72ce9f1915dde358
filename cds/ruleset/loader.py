"""Load a folder of rule files into a validated :class:`RuleSet`, or report every problem precisely.

Every problem is a :class:`Problem` printed as ``file:line:column: message``, the format editors and
CI annotate. Loading stops at nothing short of a fully consistent rule set: the service refuses to
start (and a reload is refused) with the same messages ``cds rules check`` prints.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ..assessment import FACT_FIELDS
from ..cards import PLACEHOLDERS, max_rendered_length
from ..engine import EngineCompileError, compile_check
from . import yamlpos
from .conditions import CompiledCondition, ConditionError, compile_condition
from .model import RuleSet
from .schema import IDENT as _IDENT, REQUIRED_SECTIONS, SLUG as _SLUG, URL, RuleFile, RuleSetDocument
from .shadowing import shadowed_by

log = logging.getLogger("cds.rules")

MAX_SUMMARY = 139  # CDS Hooks: summary "<140 characters"


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RuleSetError(Exception):
    """The rule files are not valid; ``problems`` lists each one with its position."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def rule_files(folder: Path) -> list[Path]:
    """The rule files of a folder: its ``*.yaml``/``*.yml`` files (the ``tests/`` folder is not one)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_ruleset(path: str | Path) -> RuleSet:
    """Load, validate and compile the rule set in ``path``; raise :class:`RuleSetError` on any problem."""
    folder = Path(path)
    if not folder.is_dir():
        raise RuleSetError([Problem(str(folder), 1, 1, "not a folder of rule files")])
    files = rule_files(folder)
    if not files:
        raise RuleSetError([Problem(str(folder), 1, 1, "no rule files (*.yaml) in this folder")])
    return _Loader(folder, files).load()


def check_ruleset(path: str | Path) -> list[Problem]:
    """Every problem in the rule set at ``path`` (empty when it is valid)."""
    try:
        load_ruleset(path)
    except RuleSetError as e:
        return e.problems
    return []


class _Loader:
    def __init__(self, folder: Path, files: list[Path]):
        self.folder = folder
        self.files = files
        self.problems: list[Problem] = []
        self.docs: dict[str, yamlpos.PositionedYaml] = {}
        self.origin: dict[str, str] = {}  # section -> file name that holds it

    # -- helpers ------------------------------------------------------------------------------
    def problem(self, file: str, mark: yamlpos.Mark, message: str) -> None:
        self.problems.append(Problem(file, mark.line, mark.column, message))

    def at(self, section: str, path: tuple, message: str, *, key: bool = False, column: int | None = None) -> None:
        file = self.origin[section]
        doc = self.docs[file]
        full = (section, *path)
        mark = yamlpos.scalar_column_mark(doc, full, column) if column is not None else doc.mark(full, key=key)
        self.problem(file, mark, message)

    # -- stages -------------------------------------------------------------------------------
    def load(self) -> RuleSet:
        merged: dict[str, Any] = {}
        digest = hashlib.sha256()
        for path in self.files:
            raw = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + raw + b"\0")
            self.parse_file(path, raw, merged)
        if self.problems:
            raise RuleSetError(self.problems)
        first = self.files[0].name
        for section in REQUIRED_SECTIONS:
            if section not in merged:
                self.problem(first, yamlpos.Mark(1, 1), f"section '{section}' is missing from the rule set (no file defines it)")
        if self.problems:
            raise RuleSetError(self.problems)
        document = RuleSetDocument.model_validate(merged)
        conditions = self.check(document)
        if self.problems:
            raise RuleSetError(self.problems)
        ruleset = RuleSet(document, digest.hexdigest(), tuple(p.name for p in self.files), conditions)
        self.check_templates(ruleset)
        self.check_engine(ruleset)
        if self.problems:
            raise RuleSetError(self.problems)
        return ruleset

    def parse_file(self, path: Path, raw: bytes, merged: dict[str, Any]) -> None:
        name = self.display_name(path)
        try:
            doc = yamlpos.load(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            self.problem(name, yamlpos.Mark(1, 1), f"not UTF-8 text: {e.reason}")
            return
        except yamlpos.YamlSyntaxError as e:
            self.problem(name, e.mark, e.message)
            return
        self.docs[name] = doc
        for dup, mark in doc.duplicates:
            self.problem(name, mark, f"duplicate key '{dup[-1]}' (the later one would silently win)")
        if doc.data is None:
            return
        if not isinstance(doc.data, dict):
            self.problem(name, doc.mark(()), "a rule file is a mapping of sections (ruleset, parameters, rules, ...)")
            return
        try:
            RuleFile.model_validate(doc.data)
        except ValidationError as e:
            self.report_validation_errors(name, doc, e.errors())
        for section, value in doc.data.items():
            if section in merged and section in RuleFile.model_fields:
                self.problem(
                    name, doc.mark((section,), key=True),
                    f"section '{section}' is also defined in {Path(self.origin[section]).name}",
                )
                continue
            merged[section] = value
            self.origin[section] = name

    def display_name(self, path: Path) -> str:
        return str(path)

    def report_validation_errors(self, file: str, doc: yamlpos.PositionedYaml, errors: list[ErrorDetails]) -> None:
        """One problem per YAML position: a union (``int | float``) fails once per branch, and a
        misspelt required key is reported as the unknown key (with its "did you mean"), not twice."""
        paths = [self.yaml_path(doc, err) for err in errors]
        misspelt = set()
        for err, path in zip(errors, paths, strict=True):
            if err["type"] == "extra_forbidden":
                parent_model = _model_at(RuleFile, path[:-1])
                allowed = list(parent_model.model_fields) if parent_model else []
                for close in difflib.get_close_matches(str(path[-1]), allowed, n=1):
                    misspelt.add((*path[:-1], close))
        seen: set[tuple] = set()
        for err, path in zip(errors, paths, strict=True):
            key = tuple(path)
            if key in seen or (err["type"] == "missing" and key in misspelt):
                continue
            seen.add(key)
            same = [e for e, p in zip(errors, paths, strict=True) if tuple(p) == key]
            if len(same) > 1 and all(e["type"] in _NUMBER_ERRORS for e in same):
                err = err.copy()
                err["type"] = "number_parsing"
            self.report_validation_error(file, doc, err, path)

    @staticmethod
    def yaml_path(doc: yamlpos.PositionedYaml, err: ErrorDetails) -> list[str | int]:
        loc = tuple(err["loc"])
        # pydantic adds union-branch names ("int", "float") to loc; drop what is not a YAML path
        path: list[str | int] = []
        node = doc.data
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
                path.append(part)
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
                path.append(part)
            elif err["type"] in ("missing", "extra_forbidden") and part == loc[-1]:
                path.append(part)
        return path

    def report_validation_error(self, file: str, doc: yamlpos.PositionedYaml, err: ErrorDetails, path: list) -> None:
        where = ".".join(str(p) for p in path)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent_model = _model_at(RuleFile, path[:-1])
            allowed = list(parent_model.model_fields) if parent_model else []
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})" if allowed else ""
            where_in = ".".join(map(str, path[:-1])) or "the file"
            self.problem(file, doc.mark(tuple(path), key=True), f"unknown key '{path[-1]}' in {where_in}{hint}")
        elif kind == "missing":
            self.problem(file, doc.mark(tuple(path[:-1])), f"{where}: required key '{path[-1]}' is missing")
        else:
            self.problem(file, doc.mark(tuple(path)), f"{where}: {_friendly(err)}")

    # -- semantic checks ----------------------------------------------------------------------
    def check(self, doc: RuleSetDocument) -> dict[str, CompiledCondition]:
        fact_types = {name: kind for name, (kind, _) in FACT_FIELDS.items()}
        params = doc.parameters
        ladder = doc.ladder.codes
        evidence = {e.id for e in doc.evidence}

        for i, rung in enumerate(doc.ladder.rungs):
            for j, ref in enumerate(rung.evidence):
                if ref not in evidence:
                    self.at("ladder", ("rungs", i, "evidence", j), f"unknown evidence id '{ref}'{_hint(ref, evidence)}")
        self.unique("ladder", [("rungs", i, "code") for i in range(len(doc.ladder.rungs))], ladder, "ladder rung")
        self.unique("evidence", [(i, "id") for i in range(len(doc.evidence))], [e.id for e in doc.evidence], "evidence id")
        self.unique("rules", [(i, "id") for i in range(len(doc.rules))], [r.id for r in doc.rules], "rule id")
        if doc.notes:
            self.unique("notes", [(i, "id") for i in range(len(doc.notes))], [n.id for n in doc.notes], "note id")
        self.unique("stages", [(i,) for i in range(len(doc.stages))], doc.stages, "stage")
        for name in params:
            if name in fact_types:
                self.at("parameters", (name,), f"parameter '{name}' has the name of a fact; rename it", key=True)

        compiled: dict[str, CompiledCondition] = {}
        items = [("rules", i, r.id, r.stage, r.when) for i, r in enumerate(doc.rules)]
        items += [("notes", i, f"note:{n.id}", n.stage, n.when) for i, n in enumerate(doc.notes)]
        for section, i, key, stage, when in items:
            if stage not in doc.stages:
                self.at(section, (i, "stage"), f"unknown stage '{stage}' (stages: {', '.join(doc.stages)})")
            try:
                compiled[key] = compile_condition(when, fact_types=fact_types, parameters=params, ladder_codes=ladder)
            except ConditionError as e:
                self.at(section, (i, "when"), e.message, column=e.column)
        if not self.problems:
            self.check_shadowing(doc, compiled)
        return compiled

    def unique(self, section: str, paths: list[tuple], values: list[str], what: str) -> None:
        seen: dict[str, tuple] = {}
        for path, value in zip(paths, values, strict=True):
            if value in seen:
                self.at(section, path, f"duplicate {what} '{value}' (first defined at {self.where(section, seen[value])})")
            else:
                seen[value] = path

    def where(self, section: str, path: tuple) -> str:
        mark = self.docs[self.origin[section]].mark((section, *path))
        return f"line {mark.line}"

    def check_shadowing(self, doc: RuleSetDocument, compiled: dict[str, CompiledCondition]) -> None:

        for stage in doc.stages:
            ordered = sorted(
                ((r.priority, i, r) for i, r in enumerate(doc.rules) if r.stage == stage), key=lambda t: (t[0], t[1])
            )
            for pos, (_, i, rule) in enumerate(ordered):
                earlier = [(r.id, compiled[r.id]) for _, _, r in ordered[:pos]]
                blocker = shadowed_by(compiled[rule.id], earlier)
                if blocker:
                    self.at(
                        "rules", (i, "when"),
                        f"rule '{rule.id}' can never fire: rule '{blocker}' has a higher priority and matches "
                        f"whenever this rule does",
                    )

    def check_templates(self, ruleset: RuleSet) -> None:
        import string

        doc = ruleset.document
        known = set(PLACEHOLDERS) | set(doc.parameters)
        templates: list[tuple[str, tuple[int | str, ...], str, bool]]
        templates = [("rules", (i, "card", "summary"), r.card.summary, True) for i, r in enumerate(doc.rules)]
        templates += [("rules", (i, "card", "detail"), r.card.detail, False) for i, r in enumerate(doc.rules)]
        templates += [("notes", (i, "text"), n.text, False) for i, n in enumerate(doc.notes)]
        templates += [("rules", (i, "recommend", "adjustment"), r.recommend.adjustment, False)
                      for i, r in enumerate(doc.rules) if r.recommend and r.recommend.adjustment]
        for section, path, text, is_summary in templates:
            try:
                fields = list(string.Formatter().parse(text))
            except ValueError as e:
                self.at(section, path, f"card text does not parse: {e} (write {{{{ and }}}} for literal braces)")
                continue
            offset, ok = 0, True
            for literal, name, spec, conversion in fields:
                offset += len(literal) + literal.count("{") + literal.count("}")  # '{{' reads as '{'
                if name is not None:
                    if name not in known:
                        ok = False
                        self.at(section, path, f"unknown fact '{{{name}}}' in card text{_hint(name, known)}",
                                column=offset)
                    elif spec or conversion:
                        ok = False
                        self.at(section, path, f"placeholder '{{{name}}}' must be a plain name, without "
                                f"':' or '!' (write {{{name}}})", column=offset)
                    offset += len(name) + 2 + (len(spec) + 1 if spec else 0) + (len(conversion) + 1 if conversion else 0)
            if ok and is_summary:
                longest = max_rendered_length(text, ruleset)
                if longest > MAX_SUMMARY:
                    self.at(section, path, f"summary can reach {longest} characters once filled in; "
                                           f"CDS Hooks allows at most {MAX_SUMMARY}")

    def check_engine(self, ruleset: RuleSet) -> None:
        """Compile to durable-rules for real, so an expression the engine rejects is caught here."""

        try:
            compile_check(ruleset)
        except EngineCompileError as e:
            section, index = ("rules", ruleset.document.rules.index(ruleset.rule(e.rule_id))) if e.rule_id else ("rules", 0)
            self.at(section, (index, "when"), f"durable-rules rejects this condition: {e.reason}")


def _model_at(model: Any, path: list[str | int]) -> Any:
    """The pydantic model class that describes the mapping at ``path`` (for 'did you mean')."""
    import typing

    from pydantic import BaseModel

    current = model
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current else None
        if field is None:
            return None
        current = None
        for candidate in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [candidate, *typing.get_args(candidate)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    current = inner
        if current is None:
            return None
    return current


_NUMBER_ERRORS = {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"}


def _friendly(err: ErrorDetails) -> str:
    """A pydantic error in words a rule author uses, with the value that was found."""
    kind, found = err["type"], err.get("input")
    shown = repr(found) if isinstance(found, (str, int, float, bool)) or found is None else f"a {_yaml_kind(found)}"
    messages = {
        "int_parsing": "expected a whole number",
        "int_type": "expected a whole number",
        "int_from_float": "expected a whole number",
        "float_parsing": "expected a number",
        "float_type": "expected a number",
        "number_parsing": "expected a number",
        "bool_parsing": "expected true or false",
        "bool_type": "expected true or false",
        "string_type": "expected text",
        "list_type": "expected a list",
        "dict_type": "expected a mapping (key: value lines)",
        "model_type": "expected a mapping (key: value lines)",
        "model_attributes_type": "expected a mapping (key: value lines)",
    }
    if kind in messages:
        return f"{messages[kind]}, found {shown}"
    if kind == "literal_error":
        return f"{err['msg'].replace('Input should be', 'expected')}, found {shown}"
    if kind == "string_pattern_mismatch":
        pattern = str((err.get("ctx") or {}).get("pattern", ""))
        rule = {
            _SLUG: "lower-case letters, digits and '-'",
            _IDENT: "lower-case letters, digits and '_'",
            URL: "an absolute URL starting with https:// or http://",
        }.get(pattern)
        return f"expected {rule}, found {shown}" if rule else f"{err['msg']}, found {shown}"
    return err["msg"]


def _yaml_kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "mapping", list: "list"}
    return kinds.get(type(value), type(value).__name__)


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


__all__ = ["Problem", "RuleSetError", "load_ruleset", "check_ruleset", "rule_files", "describe"]
