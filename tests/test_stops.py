from hllama.engine.stops import StopMatcher


def _stream(matcher: StopMatcher, pieces: list[str]) -> list[str]:
    shown, decoded = [], ""
    for piece in pieces:
        decoded += piece
        shown.append(matcher.feed(decoded))
        if matcher.stopped:
            break
    else:
        shown.append(matcher.flush(decoded))
    return shown


def test_no_stops_passes_everything_through():
    matcher = StopMatcher([])
    assert _stream(matcher, ["Hel", "lo"]) == ["Hel", "lo", ""]
    assert matcher.text == "Hello" and not matcher.stopped


def test_cuts_before_the_stop_string():
    matcher = StopMatcher(["END"])
    shown = _stream(matcher, ["one ", "two E", "N", "D three"])
    assert "".join(shown) == "one two " and matcher.text == "one two "
    assert matcher.stopped


def test_a_possible_start_of_a_stop_is_held_back_until_it_is_not():
    matcher = StopMatcher(["<|end|>"])
    assert matcher.feed("abc<") == "abc"
    assert matcher.feed("abc<|e") == ""
    assert matcher.feed("abc<|ex") == "<|ex"
    assert not matcher.stopped


def test_no_piece_ever_contains_part_of_a_stop():
    stop = "User:"
    text = "Sure. Use the U key. User: next"
    matcher = StopMatcher([stop])
    shown = _stream(matcher, list(text))
    assert "".join(shown) == "Sure. Use the U key. "
    for piece in shown:
        assert "User" not in piece


def test_first_of_several_stops_wins():
    matcher = StopMatcher(["zzz", "b c", "c"])
    assert _stream(matcher, ["a b c d zzz"]) == ["a "]


def test_held_text_is_released_when_generation_ends():
    matcher = StopMatcher(["STOP"])
    assert _stream(matcher, ["go ST"]) == ["go ", "ST"]
    assert matcher.text == "go ST"


def test_the_matched_stop_is_named():
    matcher = StopMatcher(["END", "STOP"])
    assert matcher.feed("one STOP two END") == "one " and matcher.matched == "STOP"
    assert StopMatcher(["x"]).matched is None
