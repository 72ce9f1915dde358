"""Load a folder of rule files into a validated :class:`RuleSet`, or report every problem precisely.

Every problem is a :class:`Problem` printed as ``file:line:column: message``, the format editors and
CI annotate. Loading stops at nothing short of a fully consistent rule set: the service refuses to
start (and a reload is refused) with the same messages ``cds rules check`` prints.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..assessment import FACT_FIELDS
from ..errors import CdsError
from ..order_facts import ORDER_FACT_VALUES, ORDER_PLACEHOLDERS, order_check_fact_types
from ..templates import (
    APP_TEXT_PLACEHOLDERS,
    DERIVED,
    TEXT_KEY_PLACEHOLDERS,
    TEXT_PLACEHOLDERS,
    max_rendered_length,
    placeholders_for,
)
from . import yamlpos
from .conditions import CompiledCondition, ConditionError, compile_condition
from .model import RuleSet
from .schema import IDENT as _IDENT, LIST_SECTIONS, REQUIRED_SECTIONS, SLUG as _SLUG, URL, RuleFile, RuleSetDocument

log = logging.getLogger("cds.rules")

MAX_SUMMARY = 139  # CDS Hooks: summary "<140 characters"
#: key prefix of the compiled ``when`` of an order check in ``RuleSet.conditions``
ORDER_CHECK_PREFIX = "order-check:"


ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, order=True)
class Problem:
    """One finding at ``file:line:column``. An ``error`` makes the rule set invalid (it is not loaded);
    a ``warning`` is printed (``file:line:column: warning: ...``) but the rule set still loads."""

    file: str
    line: int
    column: int
    message: str
    severity: str = ERROR  # ERROR | WARNING

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        tag = "" if self.severity == ERROR else f"{self.severity}: "
        return f"{self.file}:{self.line}:{self.column}: {tag}{self.message}"


class RuleSetError(CdsError):
    """The rule files are not valid; ``problems`` lists each one with its position."""

    def __init__(self, problems: Iterable[Problem], warnings: Iterable[Problem] = ()):
        self.problems = sorted(problems)
        #: warnings found before loading stopped (not part of the message)
        self.warnings = sorted(warnings)
        super().__init__("\n".join(str(p) for p in self.problems))


def rule_files(folder: Path) -> list[Path]:
    """The rule files of a folder: its ``*.yaml``/``*.yml`` files (the ``tests/`` folder is not one)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def content_digest(contents: Mapping[str, bytes]) -> str:
    """The sha256 of a rule set's files (file name -> bytes): ``RuleSet.sha256`` of the loaded set."""
    digest = hashlib.sha256()
    for name in sorted(contents):
        digest.update(name.encode() + b"\0" + contents[name] + b"\0")
    return digest.hexdigest()


def version_unchanged(old_sha256: str, old_version: str, new_sha256: str, new_version: str) -> bool:
    """True when the rule files changed (different content digest) but ``ruleset.version`` did not:
    the mistake ``cds rules check --since`` and a reload warn about."""
    return old_sha256 != new_sha256 and old_version.strip() == new_version.strip()


VERSION_UNCHANGED = "the rule files changed since {ref} but ruleset.version is still {version!r}; raise it"


def load_ruleset(path: str | Path) -> RuleSet:
    """Load, validate and compile the rule set in ``path``; raise :class:`RuleSetError` on any error
    (warnings do not stop loading: :func:`load_ruleset_with_warnings` returns them)."""
    return load_ruleset_with_warnings(path)[0]


def load_ruleset_with_warnings(path: str | Path) -> tuple[RuleSet, list[Problem]]:
    """The rule set in ``path`` and its warnings (sorted); raise :class:`RuleSetError` on any error."""
    folder = Path(path)
    if not folder.is_dir():
        raise RuleSetError([Problem(str(folder), 1, 1, "not a folder of rule files")])
    files = rule_files(folder)
    if not files:
        raise RuleSetError([Problem(str(folder), 1, 1, "no rule files (*.yaml) in this folder")])
    return _Loader(folder, files).load()


def check_ruleset(path: str | Path, *, warnings: bool = False) -> list[Problem]:
    """Every error in the rule set at ``path`` (empty when it is valid); with ``warnings=True`` the
    warnings too, sorted by position (``Problem.severity`` tells them apart)."""
    try:
        _, found = load_ruleset_with_warnings(path)
    except RuleSetError as e:
        return sorted([*e.problems, *e.warnings]) if warnings else e.problems
    return found if warnings else []


def check_since(path: str | Path, ref: str) -> list[Problem]:
    """A warning when the rule files in ``path`` differ from git revision ``ref`` (of the repository
    holding the folder) while ``ruleset.version`` is the same: a content change needs a new version,
    or cards, audit records and reports of two different contents carry one version."""
    import subprocess

    import yaml

    folder = Path(path)
    files = rule_files(folder) if folder.is_dir() else []
    if not files:
        return []

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, check=False)

    if git("rev-parse", "--show-toplevel").returncode != 0:
        return [Problem(str(folder), 1, 1, f"--since {ref}: this folder is not in a git repository")]
    if git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode != 0:
        return [Problem(str(folder), 1, 1, f"--since {ref}: not a git revision of the repository holding this folder")]
    listed = git("ls-tree", "--name-only", ref, "--", ".").stdout.decode().splitlines()
    old: dict[str, bytes] = {}
    for name in listed:
        if Path(name).suffix in (".yaml", ".yml"):
            shown = git("show", f"{ref}:./{name}")
            if shown.returncode == 0:
                old[Path(name).name] = shown.stdout
    if not old:
        return []  # the folder is new since ref: nothing to compare with
    old_version = None
    for raw in old.values():
        try:
            data = yaml.safe_load(raw.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("ruleset"), dict) and "version" in data["ruleset"]:
            old_version = str(data["ruleset"]["version"])
    new = {p.name: p.read_bytes() for p in files}
    for p in files:
        try:
            doc = yamlpos.load(new[p.name].decode("utf-8"))
        except (yamlpos.YamlSyntaxError, UnicodeDecodeError):
            continue
        meta = doc.data.get("ruleset") if isinstance(doc.data, dict) else None
        if isinstance(meta, dict) and "version" in meta and old_version is not None:
            version = str(meta["version"])
            if version_unchanged(content_digest(old), old_version, content_digest(new), version):
                mark = doc.mark(("ruleset", "version"))
                return [Problem(str(p), mark.line, mark.column, VERSION_UNCHANGED.format(ref=ref, version=version), WARNING)]
    return []


class _Loader:
    def __init__(self, folder: Path, files: list[Path]):
        self.folder = folder
        self.files = files
        self.problems: list[Problem] = []  # errors
        self.warnings: list[Problem] = []
        self.docs: dict[str, yamlpos.PositionedYaml] = {}
        self.origin: dict[str, str] = {}  # section -> file name that holds it
        #: rules/notes split across files: section -> (file, first merged index, count), in file order
        self.segments: dict[str, list[tuple[str, int, int]]] = {}

    # -- helpers ------------------------------------------------------------------------------
    def problem(self, file: str, mark: yamlpos.Mark, message: str) -> None:
        self.problems.append(Problem(file, mark.line, mark.column, message))

    def warn(self, file: str, mark: yamlpos.Mark, message: str) -> None:
        self.warnings.append(Problem(file, mark.line, mark.column, message, WARNING))

    def stop_on_errors(self) -> None:
        if self.problems:
            raise RuleSetError(self.problems, self.warnings)

    @staticmethod
    def named(section: str, item: Any, index: int) -> str:
        """How a message names rule/note ``index``: by its id (``rule 'step-up'``), else by position."""
        ident = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
        kind = {"rules": "rule", "order_checks": "order check", "services": "service"}.get(section, "note")
        return f"{kind} {ident!r}" if isinstance(ident, str) and ident else f"{section}.{index}"

    def locate(self, section: str, path: tuple) -> tuple[str, tuple]:
        """The file holding ``section``/``path`` and the path inside that file: item ``i`` of a merged
        ``rules``/``notes`` list is item ``i - start`` of the file that wrote it."""
        if section in self.segments and path and isinstance(path[0], int):
            for file, start, count in self.segments[section]:
                if start <= path[0] < start + count:
                    return file, (path[0] - start, *path[1:])
        return self.origin[section], path

    def position(self, section: str, path: tuple, *, key: bool = False, column: int | None = None) -> tuple[str, yamlpos.Mark]:
        file, path = self.locate(section, path)
        doc = self.docs[file]
        full = (section, *path)
        mark = yamlpos.scalar_column_mark(doc, full, column) if column is not None else doc.mark(full, key=key)
        return file, mark

    def at(self, section: str, path: tuple, message: str, *, key: bool = False, column: int | None = None) -> None:
        self.problem(*self.position(section, path, key=key, column=column), message)

    # -- stages -------------------------------------------------------------------------------
    def load(self) -> tuple[RuleSet, list[Problem]]:
        merged: dict[str, Any] = {}
        contents: dict[str, bytes] = {}
        for path in self.files:
            raw = path.read_bytes()
            contents[path.name] = raw
            self.parse_file(path, raw, merged)
        self.stop_on_errors()
        first = self.display_name(self.files[0])
        for section in REQUIRED_SECTIONS:
            if section not in merged:
                self.problem(first, yamlpos.Mark(1, 1), f"section '{section}' is missing from the rule set (no file defines it)")
        self.stop_on_errors()
        try:
            document = RuleSetDocument.model_validate(merged)
        except ValidationError as e:  # pragma: no cover - every file was validated on its own
            for err in e.errors():
                self.problem(first, yamlpos.Mark(1, 1), f"{'.'.join(map(str, err['loc']))}: {_friendly(err)}")
            self.stop_on_errors()
            raise
        conditions = self.check(document)
        self.stop_on_errors()
        ruleset = RuleSet(document, content_digest(contents), tuple(p.name for p in self.files), conditions)
        self.check_templates(ruleset)
        self.check_engine(ruleset)
        self.stop_on_errors()
        self.check_literal_numbers(document)
        self.check_topic_code(document)
        return ruleset, sorted(self.warnings)

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
        self.check_empty_sections(name, doc)
        for section, value in doc.data.items():
            if section in LIST_SECTIONS and isinstance(value, list):
                # rules and notes may be split across files: concatenated in file order
                parts = self.segments.setdefault(section, [])
                start = len(merged.get(section, []))
                parts.append((name, start, len(value)))
                merged[section] = [*merged.get(section, []), *value]
                self.origin.setdefault(section, name)
                continue
            if section in merged and section in RuleFile.model_fields:
                self.problem(
                    name, doc.mark((section,), key=True),
                    f"section '{section}' is also defined in {Path(self.origin[section]).name}",
                )
                continue
            merged[section] = value
            self.origin[section] = name

    def check_empty_sections(self, name: str, doc: yamlpos.PositionedYaml) -> None:
        """A section written with no value (``disclaimer:``) or a blank disclaimer is an error here,
        with its position (pydantic would only see "no section", or nothing wrong with ``"  "``)."""
        for section, value in doc.data.items():
            if section not in RuleFile.model_fields:
                continue
            if value is None:
                what = "the disclaimer every card carries" if section == "disclaimer" else "its content"
                self.problem(name, doc.mark((section,), key=True), f"section '{section}' has no value: write {what}")
            elif section == "disclaimer" and isinstance(value, str) and not value.strip():
                self.problem(name, doc.mark((section,)),
                             "disclaimer is blank: write the disclaimer text every card carries")

    def display_name(self, path: Path) -> str:
        return str(path)

    def report_validation_errors(self, file: str, doc: yamlpos.PositionedYaml, errors: list[Any]) -> None:
        """One problem per YAML position: a union (``int | float``) fails once per branch, and a
        misspelt required key is reported as the unknown key (with its "did you mean"), not twice."""
        paths = [self.yaml_path(doc, err) for err in errors]
        # A union of shapes (one coding, or a list of codings) fails once per branch: the branch whose
        # shape fits reports deeper errors; "expected a list" of the other branch would only confuse.
        deeper = {tuple(p[:n]) for p in paths for n in range(len(p))}
        kept = [(e, p) for e, p in zip(errors, paths, strict=True)
                if not (e["type"] in ("list_type", "model_type", "dict_type") and tuple(p) in deeper)]
        errors, paths = [e for e, _ in kept], [p for _, p in kept]
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
                err = dict(err, type="number_parsing")
            self.report_validation_error(file, doc, err, path)

    @staticmethod
    def yaml_path(doc: yamlpos.PositionedYaml, err: dict) -> list[str | int]:
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

    def report_validation_error(self, file: str, doc: yamlpos.PositionedYaml, err: dict, path: list) -> None:
        kind = err["type"]
        if kind == "extra_forbidden":
            parent_model = _model_at(RuleFile, path[:-1])
            allowed = list(parent_model.model_fields) if parent_model else []
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})" if allowed else ""
            prefix, rest = self.split_item(doc, path[:-1])
            inside = f"{prefix}: unknown key '{path[-1]}'" + (f" in {rest}" if rest else "") if prefix else (
                f"unknown key '{path[-1]}' in {rest or 'the file'}")
            self.problem(file, doc.mark(tuple(path), key=True), f"{inside}{hint}")
        elif kind == "missing":
            prefix, rest = self.split_item(doc, path[:-1])
            where = f"{prefix}: {rest}" if prefix and rest else prefix or rest
            self.problem(file, doc.mark(tuple(path[:-1])), f"{where}: required key '{path[-1]}' is missing")
        else:
            prefix, rest = self.split_item(doc, path)
            where = f"{prefix}: {rest}" if prefix and rest else prefix or rest
            self.problem(file, doc.mark(tuple(path)), f"{where}: {_friendly(err)}")

    def split_item(self, doc: yamlpos.PositionedYaml, path: list) -> tuple[str, str]:
        """``rules.1.priority`` -> ("rule 'onset-unknown'", "priority"): a rule or note is named by its id."""
        if len(path) >= 2 and path[0] in ("rules", "notes", "order_checks", "services") and isinstance(path[1], int):
            items = doc.data.get(path[0]) if isinstance(doc.data, dict) else None
            if isinstance(items, list) and path[1] < len(items):
                name = self.named(path[0], items[path[1]], path[1])
                return name, ".".join(map(str, path[2:]))
        return "", ".".join(map(str, path))

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
        categories = [(key, i, c.id) for key in ("red_flags", "red_flag_risks")
                      for i, c in enumerate(getattr(doc.codes, key))]
        self.unique("codes", [(key, i, "id") for key, i, _ in categories], [c for _, _, c in categories],
                    "red-flag or risk-factor category id")
        self.unique("rules", [(i, "id") for i in range(len(doc.rules))], [r.id for r in doc.rules], "rule id")
        if doc.notes:
            self.unique("notes", [(i, "id") for i in range(len(doc.notes))], [n.id for n in doc.notes], "note id")
        self.unique("stages", [(i,) for i in range(len(doc.stages))], doc.stages, "stage")
        for name in params:
            if name in fact_types:
                self.at("parameters", (name,), f"parameter '{name}' has the name of a fact; rename it", key=True)

        compiled: dict[str, CompiledCondition] = {}
        items = [("rules", i, r.id, f"rule '{r.id}'", r.stage, r.when) for i, r in enumerate(doc.rules)]
        items += [("notes", i, f"note:{n.id}", f"note '{n.id}'", n.stage, n.when) for i, n in enumerate(doc.notes)]
        for section, i, key, named, stage, when in items:
            if stage not in doc.stages:
                self.at(section, (i, "stage"), f"{named}: unknown stage '{stage}' (stages: {', '.join(doc.stages)})")
            try:
                compiled[key] = compile_condition(when, fact_types=fact_types, parameters=params, ladder_codes=ladder)
            except ConditionError as e:
                self.at(section, (i, "when"), f"{named}: {e.message}", column=e.column)
        for i, rule in enumerate(doc.rules):
            named = f"rule '{rule.id}'"
            if rule.silent:
                for key in ("card", "recommend"):
                    if getattr(rule, key) is not None:
                        self.at("rules", (i, key), f"{named}: a silent rule answers no card, so it has no "
                                f"'{key}': remove '{key}' or 'silent: true'", key=True)
            elif rule.card is None:
                self.at("rules", (i,), f"{named}: required key 'card' is missing (write the card, or "
                        f"'silent: true' for a rule that answers no card)")
        self.check_services(doc)
        self.check_trend(doc)
        self.check_order_checks(doc, compiled)
        if not self.problems:
            self.check_shadowing(doc, compiled)
        return compiled

    def check_services(self, doc: RuleSetDocument) -> None:
        """``services``: unique ids, known stages, one service per hook at most (a hook request names
        its service by id, but two services of one hook would answer the same EHR event twice)."""
        services = doc.services
        self.unique("services", [(i, "id") for i in range(len(services))], [s.id for s in services], "service id")
        self.unique("services", [(i, "hook") for i in range(len(services))], [s.hook for s in services],
                    "service for hook")
        for i, svc in enumerate(services):
            for j, stage in enumerate(svc.stages or ()):
                if stage not in doc.stages:
                    self.at("services", (i, "stages", j),
                            f"service '{svc.id}': unknown stage '{stage}' (stages: {', '.join(doc.stages)})")
        if doc.order_checks and not any(s.hook == "order-sign" for s in services):
            self.at("order_checks", (), "order checks are declared but no service answers the 'order-sign' hook; "
                    "add one to 'services'", key=True)

    def check_trend(self, doc: RuleSetDocument) -> None:
        """``texts.trend``: the bands name parameters of the rule set."""
        trend = doc.texts.trend
        for key in ("target_low", "target_high", "pain_gate"):
            name = getattr(trend, key) if trend is not None else None
            if name is not None and name not in doc.parameters:
                self.at("texts", ("trend", key), f"texts.trend.{key}: unknown parameter '{name}'"
                        f"{_hint(name, doc.parameters)}")

    def check_order_checks(self, doc: RuleSetDocument, compiled: dict[str, CompiledCondition]) -> None:
        """``order_checks``: unique ids, conditions over the order facts, no check shadowed by another."""
        checks = doc.order_checks
        if not checks:
            return
        self.unique("order_checks", [(i, "id") for i in range(len(checks))], [c.id for c in checks], "order check id")
        fact_types = order_check_fact_types()
        keys = []
        for i, check in enumerate(checks):
            try:
                compiled[ORDER_CHECK_PREFIX + check.id] = compile_condition(
                    check.when, fact_types=fact_types, parameters=doc.parameters, ladder_codes=doc.ladder.codes,
                    string_values=ORDER_FACT_VALUES,
                )
                keys.append((check.priority, i, check))
            except ConditionError as e:
                self.at("order_checks", (i, "when"), f"order check '{check.id}': {e.message}", column=e.column)
        if len(keys) != len(checks):
            return
        from .shadowing import shadowed_by

        ordered = sorted(keys, key=lambda t: (t[0], t[1]))
        for pos, (_, i, check) in enumerate(ordered):
            earlier = [(c.id, compiled[ORDER_CHECK_PREFIX + c.id]) for _, _, c in ordered[:pos]]
            blocker = shadowed_by(compiled[ORDER_CHECK_PREFIX + check.id], earlier)
            if blocker:
                self.at("order_checks", (i, "when"),
                        f"order check '{check.id}' can never fire: order check '{blocker}' has a higher priority "
                        f"and matches whenever this one does")

    def unique(self, section: str, paths: list[tuple], values: list[str], what: str) -> None:
        seen: dict[str, tuple] = {}
        for path, value in zip(paths, values, strict=True):
            if value in seen:
                self.at(section, path, f"duplicate {what} '{value}' (first defined at {self.where(section, seen[value])})")
            else:
                seen[value] = path

    def where(self, section: str, path: tuple) -> str:
        file, local = self.locate(section, path)
        mark = self.docs[file].mark((section, *local))
        several = len({f for f, _, _ in self.segments.get(section, [])}) > 1
        return f"{Path(file).name} line {mark.line}" if several else f"line {mark.line}"

    def check_shadowing(self, doc: RuleSetDocument, compiled: dict[str, CompiledCondition]) -> None:
        from .shadowing import shadowed_by

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
        doc = ruleset.document
        known = set(placeholders_for(ruleset))
        text_known = known | set(TEXT_PLACEHOLDERS)
        templates: list[tuple[str, tuple[int | str, ...], str, bool, set[str]]]
        templates = [("rules", (i, "card", "summary"), r.card.summary, True, known)
                     for i, r in enumerate(doc.rules) if r.card is not None]
        templates += [("rules", (i, "card", "detail"), r.card.detail, False, known)
                      for i, r in enumerate(doc.rules) if r.card is not None]
        templates += [("notes", (i, "text"), n.text, False, known) for i, n in enumerate(doc.notes)]
        templates += [("rules", (i, "recommend", "adjustment"), r.recommend.adjustment, False, known)
                      for i, r in enumerate(doc.rules) if r.recommend and r.recommend.adjustment]
        texts = doc.texts
        templates += [("texts", ("dose",), texts.dose, False, known)]
        templates += [("texts", (key,), getattr(texts, key), False, text_known)
                      for key in ("suggestion_label", "action_description", "patient_instruction", "order_note",
                                  "provenance", "list_separator")]
        templates += [("texts", (key,), getattr(texts, key), False, text_known | extra)
                      for key, extra in TEXT_KEY_PLACEHOLDERS.items()]
        if doc.app is not None:  # the SMART app's wording: the parameters and each key's own placeholders
            params = set(doc.parameters) | set(DERIVED)
            for key, value in doc.app.model_dump().items():
                items = value.items() if isinstance(value, dict) else [(None, value)]
                for sub, text in items:
                    own = APP_TEXT_PLACEHOLDERS.get((key,) if sub is None else (key, sub), ())
                    where: tuple[int | str, ...] = (key,) if sub is None else (key, sub)
                    templates.append(("app", where, text, False, params | set(own)))
        order_known = known | set(ORDER_PLACEHOLDERS)
        order_text_known = order_known | set(TEXT_PLACEHOLDERS)
        for i, check in enumerate(doc.order_checks):
            templates += [("order_checks", (i, "card", "summary"), check.card.summary, True, order_known),
                          ("order_checks", (i, "card", "detail"), check.card.detail, False, order_known),
                          ("order_checks", (i, "suggestion", "label"), check.suggestion.label, False, order_text_known),
                          ("order_checks", (i, "suggestion", "delete"), check.suggestion.delete, False,
                           order_text_known)]
            if check.suggestion.create:
                templates.append(("order_checks", (i, "suggestion", "create"), check.suggestion.create, False,
                                  order_text_known))
        for section, path, text, is_summary, allowed in templates:
            try:
                fields = list(string.Formatter().parse(text))
            except ValueError as e:
                self.at(section, path, f"card text does not parse: {e} (write {{{{ and }}}} for literal braces)")
                continue
            offset, ok = 0, True
            for literal, name, spec, conversion in fields:
                offset += len(literal) + literal.count("{") + literal.count("}")  # '{{' reads as '{'
                if name is not None:
                    if name not in allowed:
                        ok = False
                        self.at(section, path, f"unknown fact '{{{name}}}' in card text{_hint(name, allowed)}",
                                column=offset)
                    elif spec or conversion:
                        ok = False
                        self.at(section, path, f"placeholder '{{{name}}}' must be a plain name, without "
                                f"':' or '!' (write {{{name}}})", column=offset)
                    offset += len(name) + 2 + (len(spec) + 1 if spec else 0) + (len(conversion) + 1 if conversion else 0)
            if ok and is_summary:
                if section == "order_checks":  # an order placeholder is as long as its card counterpart
                    for name, like in ORDER_PLACEHOLDERS.items():
                        text = text.replace("{" + name + "}", "{" + like + "}")
                longest = max_rendered_length(text, ruleset)
                if longest > MAX_SUMMARY:
                    self.at(section, path, f"summary can reach {longest} characters once filled in; "
                                           f"CDS Hooks allows at most {MAX_SUMMARY}")

    def check_literal_numbers(self, doc: RuleSetDocument) -> None:
        """Warn about a number written into card text that equals a parameter: when the parameter
        changes, the text would silently go stale (write the placeholder instead)."""
        texts: list[tuple[str, tuple[int | str, ...], str]]
        texts = [("rules", (i, "card", "summary"), r.card.summary) for i, r in enumerate(doc.rules) if r.card is not None]
        texts += [("rules", (i, "card", "detail"), r.card.detail) for i, r in enumerate(doc.rules) if r.card is not None]
        texts += [("rules", (i, "recommend", "adjustment"), r.recommend.adjustment)
                  for i, r in enumerate(doc.rules) if r.recommend and r.recommend.adjustment]
        texts += [("notes", (i, "text"), n.text) for i, n in enumerate(doc.notes)]
        texts += [("order_checks", (i, "card", key), getattr(c.card, key))
                  for i, c in enumerate(doc.order_checks) for key in ("summary", "detail")]
        for section, path, text in texts:
            for number, column in literal_numbers(text):
                names = [name for name, value in doc.parameters.items() if float(value) == number]
                if not names:
                    continue
                shown = " or ".join(f"'{n}'" for n in names)
                write = " or ".join(f"{{{n}}}" for n in names)
                kind = "parameter" if len(names) == 1 else "parameters"
                found = _NUMBER.match(text, column)
                literal = found[0] if found else str(number)
                self.warn(*self.position(section, path, column=column),
                          f"{literal} in card text equals {kind} {shown}; write {write}")

    def check_topic_code(self, doc: RuleSetDocument) -> None:
        """Epic tracks a card's overrides by ``source.topic.code`` and accepts letters and digits only."""
        topic = doc.ruleset.source.topic
        if topic is not None and not (topic.code.isascii() and topic.code.isalnum()):
            self.warn(*self.position("ruleset", ("source", "topic", "code")),
                      f"topic code '{topic.code}' is not letters and digits only; Epic tracks overrides by this "
                      f"code and requires it alphanumeric (and never changed), e.g. "
                      f"'{''.join(ch for ch in topic.code if ch.isascii() and ch.isalnum()) or 'LBPEXERCISE'}'")

    def check_engine(self, ruleset: RuleSet) -> None:
        """Compile to durable-rules for real, so an expression the engine rejects is caught here."""
        from ..engine import EngineCompileError, compile_check

        try:
            compile_check(ruleset)
        except EngineCompileError as e:
            section, index = ("rules", ruleset.document.rules.index(ruleset.rule(e.rule_id))) if e.rule_id else ("rules", 0)
            named = f"rule '{e.rule_id}': " if e.rule_id else ""
            self.at(section, (index, "when"), f"{named}durable-rules rejects this condition: {e.reason}")


#: a number in card text: not part of a word or code (``bird-dog-28``, ``v2``), ranges (``15-25``) count
_NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z_]-)\d+(?:\.\d+)?(?!\w|\.\d)")
_PLACEHOLDER_OR_NUMBER = re.compile(r"\{\{|\}\}|\{[^{}]*\}|" + _NUMBER.pattern)


def literal_numbers(text: str) -> list[tuple[float, int]]:
    """The numbers written in the literal text of a card template, with their 0-based columns
    (a number inside a placeholder such as ``{reps}`` is not literal text)."""
    return [(float(m[0]), m.start()) for m in _PLACEHOLDER_OR_NUMBER.finditer(text) if m[0][0].isdigit()]


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


def _friendly(err: Any) -> str:
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
        "string_too_short": "must not be empty: write the text",
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
        pattern = (err.get("ctx") or {}).get("pattern")
        rule = {
            _SLUG: "lower-case letters, digits and '-'",
            _IDENT: "lower-case letters, digits and '_'",
            URL: "an absolute URL starting with https:// or http://",
        }.get(str(pattern))
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


__all__ = [
    "ERROR",
    "ORDER_CHECK_PREFIX",
    "WARNING",
    "Problem",
    "RuleSetError",
    "check_ruleset",
    "check_since",
    "content_digest",
    "describe",
    "literal_numbers",
    "load_ruleset",
    "load_ruleset_with_warnings",
    "rule_files",
    "version_unchanged",
]
