"""Plain helpers shared by several test modules (fixtures are in tests/conftest.py).

`tests/` is on sys.path while pytest runs (rootdir-relative "prepend" import of the
test modules and conftest.py), so a test imports these as ``from support.words import ...``.
"""
