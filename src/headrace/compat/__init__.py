"""Compatibility modules: the APIs of the systems headrace absorbs (DESIGN §2.7).

Each module (``headrace.compat.pescador``, ...) is a thin adapter built only on the public
``headrace`` package, so that the system's documented examples run with only their import
line changed.
"""
