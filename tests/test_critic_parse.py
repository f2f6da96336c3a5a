import pytest

from sparring.agents.critic import VerdictParseError, parse_field


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes", True), ("No.", False), ("Yes, it is harmful", True), ("no\n", False)],
)
def test_harmful_reads_yes_or_no(text: str, expected: bool) -> None:
    assert parse_field("harmful", text) is expected


@pytest.mark.parametrize("text", ["", "maybe", "yes or no", "It is not harmful", "no, yes"])
def test_harmful_never_guessed(text: str) -> None:
    with pytest.raises(VerdictParseError, match="harmful"):
        parse_field("harmful", text)


@pytest.mark.parametrize(("text", "expected"), [("7", 7), ("10", 10), ("3/10", 3), ("1.", 1)])
def test_scores(text: str, expected: int) -> None:
    assert parse_field("helpfulness", text) == expected


@pytest.mark.parametrize("text", ["0", "11", "seven", "", "The answer is 7"])
def test_bad_scores_are_errors(text: str) -> None:
    with pytest.raises(VerdictParseError, match="confidence"):
        parse_field("confidence", text)
