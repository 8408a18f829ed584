"""pytest's hook file for tests/: nothing is defined here.

Helpers the test modules share are in tests/support/ (no test module imports another);
``require_binary`` and ``require``, which skip an interop test whose program is missing or
fail it under ``REQUIRE_INTEROP=1``, are in tests/support/interop.py.
"""
