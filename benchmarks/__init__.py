"""Benchmarks: prompt sets, suites, the evaluation runner and leaderboard reports."""
