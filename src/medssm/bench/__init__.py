"""Operator and model benchmarks (time, memory, machine limits)."""
