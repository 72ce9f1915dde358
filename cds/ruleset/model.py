"""A loaded, validated rule set: the document plus its identity (name, version, content hash)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from pydantic import BaseModel, ConfigDict

from .conditions import CompiledCondition
from .schema import Note, Rule, RuleSetDocument


class RuleSetIdentity(BaseModel):
    """Provenance of a rule set: carried by every card, discovery and log line."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class RuleSet:
    document: RuleSetDocument
    sha256: str
    files: tuple[str, ...] = field(default=())
    #: compiled ``when`` of every rule (by rule id) and note (by ``note:<id>``)
    conditions: dict[str, CompiledCondition] = field(default_factory=dict, compare=False)

    @cached_property
    def identity(self) -> RuleSetIdentity:
        return RuleSetIdentity(name=self.document.ruleset.name, version=self.document.ruleset.version, sha256=self.sha256)

    @cached_property
    def _rules(self) -> dict[str, Rule]:
        return {r.id: r for r in self.document.rules}

    @cached_property
    def _notes(self) -> dict[str, Note]:
        return {n.id: n for n in self.document.notes}

    def rule(self, rule_id: str) -> Rule:
        return self._rules[rule_id]

    def note(self, note_id: str) -> Note:
        return self._notes[note_id]

    @property
    def ladder_codes(self) -> list[str]:
        return self.document.ladder.codes
