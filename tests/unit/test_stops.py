from worker.stops import StopFilter


def run(stops, chunks):
    f = StopFilter(stops)
    out = [f.feed(c) for c in chunks]
    return "".join(out) + f.flush(), f.stopped


def test_no_stops_passes_through():
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_inside_a_chunk_is_cut_and_not_included():
    assert run(["END"], ["hello END world"]) == ("hello ", True)


def test_stop_split_across_chunks_never_leaks():
    f = StopFilter(["</answer>"])
    emitted = [f.feed(c) for c in ["42 </", "ans", "wer> more"]]
    assert emitted == ["42 ", "", ""]
    assert f.stopped


def test_partial_match_that_does_not_complete_is_released():
    assert run(["STOP"], ["ST", "ART"]) == ("START", False)
    assert run(["STOP"], ["abc ST"]) == ("abc ST", False)  # released at the end


def test_earliest_of_several_stops_wins():
    assert run(["b", "a"], ["xxab"]) == ("xx", True)


def test_nothing_after_stop():
    f = StopFilter(["."])
    assert f.feed("one. two") == "one"
    assert f.feed("three") == ""
    assert f.flush() == ""
