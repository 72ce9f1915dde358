"""The rule-set model: schema, loading, conditions and the rule-file test runner."""
