"""Support code for the test suite, kept out of tests/ so that tests/ holds only tests: tiny
models and checkpoints for the eval tests (evalkit), and a headless-Chromium page checker
(chromium_check, also a command: python -m testing.chromium_check REPORT.html)."""
