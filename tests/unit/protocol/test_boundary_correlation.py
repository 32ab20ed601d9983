"""``check_correlation_id``: what may travel as the ``x-snakepit-correlation-id`` header."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol.boundary import MAX_CORRELATION_ID, check_correlation_id

_HEADER_SAFE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=256)


@pytest.mark.parametrize(
    "value", ["", "a", "0f8fad5b-d9cb-469f-a165-70867728950e", "x y ~!", "z" * 256]
)
def test_header_safe_ids_pass_unchanged(value: str) -> None:
    assert check_correlation_id(value) == value


@pytest.mark.parametrize(
    "value", ["caf\u00e9", "a\nb", "tab\there", "\x7f", "\x00", "z" * (MAX_CORRELATION_ID + 1)]
)
def test_other_ids_are_invalid_argument_saying_what_to_use(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match="printable ASCII") as info:
        check_correlation_id(value)
    assert isinstance(info.value, ValueError)  # a plain `except ValueError` catches it
    assert len(str(info.value)) < 300  # a long id is shortened in the message


@given(_HEADER_SAFE)
def test_every_printable_ascii_id_passes(value: str) -> None:
    assert check_correlation_id(value) == value


@given(st.text(min_size=1, max_size=40).filter(lambda t: any(not " " <= c <= "~" for c in t)))
def test_every_id_with_another_character_is_refused(value: str) -> None:
    with pytest.raises(InvalidArgumentError):
        check_correlation_id(value)
