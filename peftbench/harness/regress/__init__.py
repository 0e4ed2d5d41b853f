"""The CI accuracy gate: a fixed suite judged against a committed baseline."""
