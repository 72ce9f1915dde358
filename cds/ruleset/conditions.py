"""The condition language of rule files, compiled to durable-rules expressions.

A condition is a small boolean expression over the assessment facts and the rule-set parameters::

    onset_known and onset_days_ago < new_onset_days
    max_pain > pain_gate_max and on_first_rung
    not pain_recorded
    exercise == 'bird-dog'
    missing(max_pain)

Grammar: ``and``/``or``/parentheses; ``not`` before a yes/no fact; one comparison
(``< <= > >= == !=``) between a number fact and a number or parameter (either side);
``==``/``!=`` between ``exercise`` and a ladder code in quotes; ``present(fact)`` and
``missing(fact)``. Python's own parser reads the text (so positions are exact); anything
outside this grammar is a :class:`ConditionError` with the column it starts at.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CdsError

_OPS = {ast.Lt: "$lt", ast.LtE: "$lte", ast.Gt: "$gt", ast.GtE: "$gte", ast.Eq: "", ast.NotEq: "$neq"}
_MIRROR = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


class ConditionError(CdsError, ValueError):
    """A condition that does not parse or refers to something undefined. ``column`` is 0-based."""

    def __init__(self, message: str, column: int = 0):
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Comparison:
    """One atomic test on one fact: the unit the shadowing analysis reasons about."""

    fact: str
    op: str  # "<", "<=", ">", ">=", "==", "!=", "present", "missing"
    value: Any = None


@dataclass
class CompiledCondition:
    source: str
    durable: dict[str, Any]
    facts: set[str] = field(default_factory=set)
    parameters: set[str] = field(default_factory=set)
    #: the condition in disjunctive normal form: a list of alternatives, each a list of comparisons
    dnf: list[list[Comparison]] = field(default_factory=list)


def compile_condition(
    source: str,
    *,
    fact_types: Mapping[str, type],
    parameters: Mapping[str, float],
    ladder_codes: Sequence[str],
    string_values: Mapping[str, Sequence[str]] | None = None,
) -> CompiledCondition:
    """Parse ``source`` and compile it to a durable-rules expression (parameters substituted).

    A text fact is compared with a ladder code, unless ``string_values`` lists its own values.
    """
    text = source.strip()
    lead = len(source) - len(source.lstrip())
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        if not e.offset or e.offset > len(text):  # Python reports the end of the input as offset 0
            raise ConditionError(f"condition does not parse: it ends too early ({e.msg})", lead + len(text)) from None
        raise ConditionError(f"condition does not parse: {e.msg}", lead + e.offset - 1) from None
    compiler = _Compiler(fact_types, parameters, ladder_codes, lead, string_values or {})
    try:
        durable, dnf = compiler.visit(tree.body)
    except ConditionError:
        raise
    except (TypeError, ValueError, ArithmeticError, RecursionError) as e:  # a mismatch the grammar missed
        raise ConditionError(f"condition cannot be compiled: {e}", lead) from None
    return CompiledCondition(text, durable, compiler.facts, compiler.parameters, dnf)


class _Compiler:
    def __init__(self, fact_types, parameters, ladder_codes, lead, string_values):
        self.string_values = string_values
        self.fact_types = fact_types
        self.params = parameters
        self.ladder = list(ladder_codes)
        self.lead = lead
        self.facts: set[str] = set()
        self.parameters: set[str] = set()

    def error(self, node: ast.AST, message: str) -> ConditionError:
        return ConditionError(message, self.lead + getattr(node, "col_offset", 0))

    def visit(self, node: ast.AST) -> tuple[dict[str, Any], list[list[Comparison]]]:
        if isinstance(node, ast.BoolOp):
            parts = [self.visit(v) for v in node.values]
            if isinstance(node.op, ast.And):
                dnf: list[list[Comparison]] = [[]]
                for _, alternatives in parts:
                    dnf = [a + b for a in dnf for b in alternatives]
                return {"$and": [p for p, _ in parts]}, dnf
            return {"$or": [p for p, _ in parts]}, [alt for _, alts in parts for alt in alts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            name = self.bool_fact(node.operand, "'not' applies only to a yes/no fact, e.g. 'not pain_recorded'")
            return {name: False}, [[Comparison(name, "==", False)]]
        if isinstance(node, ast.Name):
            name = self.bool_fact(node, f"{node.id!r} is not a yes/no fact; compare it, e.g. '{node.id} > 0'")
            return {name: True}, [[Comparison(name, "==", True)]]
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.error(node, f"unsupported expression {ast.unparse(node)!r}: use comparisons joined by 'and'/'or'")

    def fact(self, node: ast.AST) -> str:
        if not isinstance(node, ast.Name):
            raise self.error(node, f"expected a fact name, found {ast.unparse(node)!r}")
        if node.id not in self.fact_types:
            hint = _did_you_mean(node.id, list(self.fact_types) + list(self.params))
            raise self.error(node, f"unknown fact {node.id!r}{hint}")
        self.facts.add(node.id)
        return node.id

    def bool_fact(self, node: ast.AST, message: str) -> str:
        if not isinstance(node, ast.Name):
            raise self.error(node, message)
        if isinstance(node, ast.Name) and node.id in self.fact_types and self.fact_types[node.id] is not bool:
            raise self.error(node, message)
        if isinstance(node, ast.Name) and node.id in self.params:
            raise self.error(node, f"{node.id!r} is a parameter, not a fact: compare a fact with it")
        name = self.fact(node)
        return name

    def call(self, node: ast.Call) -> tuple[dict[str, Any], list[list[Comparison]]]:
        fn = node.func.id if isinstance(node.func, ast.Name) else None
        if fn not in ("present", "missing") or len(node.args) != 1 or node.keywords:
            raise self.error(node, "the only functions are present(fact) and missing(fact)")
        name = self.fact(node.args[0])
        op = "$ex" if fn == "present" else "$nex"
        return {op: {name: 1}}, [[Comparison(name, fn)]]

    def operand_value(self, node: ast.AST, fact: str) -> Any:
        kind = self.fact_types[fact]
        if kind is bool:
            raise self.error(node, f"{fact!r} is a yes/no fact: write '{fact}' or 'not {fact}', not a comparison")
        if kind is str:
            values = self.string_values.get(fact)
            if values is not None:
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                    raise self.error(node, f"{fact!r} is compared with a value in quotes, e.g. {fact} == '{values[0]}'")
                if node.value not in values:
                    hint = _did_you_mean(node.value, list(values))
                    raise self.error(node, f"unknown {fact} {node.value!r}{hint} (one of: {', '.join(values)})")
                return node.value
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                raise self.error(node, f"{fact!r} is compared with a ladder code in quotes, e.g. {fact} == 'bird-dog'")
            if node.value not in self.ladder:
                hint = _did_you_mean(node.value, self.ladder)
                raise self.error(node, f"unknown ladder rung {node.value!r}{hint}")
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.params and node.id in self.fact_types:
                raise self.error(node, f"{fact!r} is compared with another fact {node.id!r}: compare a fact with "
                                       f"a number or a parameter name")
            if node.id not in self.params:
                hint = _did_you_mean(node.id, list(self.params))
                raise self.error(node, f"unknown parameter {node.id!r}{hint}")
            self.parameters.add(node.id)
            return float(self.params[node.id])
        number = None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _is_number(node.operand):
            number = -float(node.operand.value)  # type: ignore[attr-defined]  # _is_number: an ast.Constant
        elif _is_number(node):
            number = float(node.value)  # type: ignore[attr-defined]  # _is_number: an ast.Constant
        if number is not None:
            if not math.isfinite(number):
                raise self.error(node, f"number {ast.unparse(node)} is too large")
            return number
        kind = _kind_of(node)
        found = f"not {kind} ({ast.unparse(node)})" if kind else f"found {ast.unparse(node)!r}"
        raise self.error(node, f"{fact!r} is a number fact: compare it with a number or a parameter name, {found}")

    def compare(self, node: ast.Compare) -> tuple[dict[str, Any], list[list[Comparison]]]:
        if len(node.ops) != 1:
            raise self.error(node, "one comparison at a time: write 'a < b and b < c'")
        op_type = type(node.ops[0])
        if op_type not in _OPS:
            raise self.error(node, f"unsupported comparison {ast.unparse(node)!r}")
        left, right = node.left, node.comparators[0]
        if not (isinstance(left, ast.Name) and left.id in self.fact_types) and (
            isinstance(right, ast.Name) and right.id in self.fact_types
        ):
            left, right, op_type = right, left, _MIRROR[op_type]
        fact = self.fact(left)
        value = self.operand_value(right, fact)
        if self.fact_types[fact] is str and op_type not in (ast.Eq, ast.NotEq):
            raise self.error(node, f"{fact!r} can only be compared with == or !=")
        durable = {fact: value} if op_type is ast.Eq else {_OPS[op_type]: {fact: value}}
        return durable, [[Comparison(fact, _SYMBOL[op_type], value)]]


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _kind_of(node: ast.AST) -> str:
    """What a rule author wrote, in words, for a value that is not a number."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _kind_of(node.operand)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return "a yes/no value"
        if isinstance(node.value, str):
            return "text"
    if isinstance(node, ast.BinOp):
        return "a calculation"
    return ""


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TESTS = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def holds(condition: CompiledCondition, facts: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holds for ``facts`` (name -> value; an unknown fact is absent or None).

    Evaluated in Python from the condition's disjunctive normal form, with the engine's semantics: a
    comparison on an absent fact is false; ``present``/``missing`` test presence. Used for conditions
    the durable-rules engine does not run (the order checks of the ``order-sign`` service).
    """
    def test(c: Comparison) -> bool:
        value = facts.get(c.fact)
        if c.op == "present":
            return value is not None
        if c.op == "missing":
            return value is None
        if value is None:
            return False
        if isinstance(c.value, bool) or isinstance(value, bool):
            return c.op in ("==", "!=") and _TESTS[c.op](bool(value), c.value)
        if isinstance(c.value, str) or isinstance(value, str):
            return c.op in ("==", "!=") and _TESTS[c.op](str(value), str(c.value))
        return bool(_TESTS[c.op](float(value), float(c.value)))

    return any(all(test(c) for c in alternative) for alternative in condition.dnf)
