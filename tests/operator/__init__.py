"""Tests of the operator: the OpenAiRuntime model and CRD, reconciliation, rotation."""
