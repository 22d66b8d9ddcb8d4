"""Backends start a stage's workers and move items to and from them; see `_base`."""
