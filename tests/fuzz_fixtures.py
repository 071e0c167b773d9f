"""Hypothesis strategies shared by the fuzzing tests."""

from __future__ import annotations

from hypothesis import strategies as st

# Any JSON value, small: what a confused or hostile client might send as a body or a field.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=300),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=10,
)
