import threading

import pytest

from hllama.engine import Finished, build_prompt, stream
from hllama.errors import PromptTooLong
from hllama.options import Parameters

from .tinymodel import CHATS

GREEDY = Parameters(temperature=0.0, max_new_tokens=60)
UNSEEN = "Write something new about rivers and mountains."


def _ids(tiny, question: str) -> list[int]:
    return build_prompt(tiny.tokenizer, [{"role": "user", "content": question}]).ids


def _run(tiny, question: str, params: Parameters, **kwargs) -> tuple[list[str], Finished]:
    items = list(stream(tiny, _ids(tiny, question), params, **kwargs))
    *pieces, finished = items
    assert isinstance(finished, Finished) and all(isinstance(piece, str) for piece in pieces)
    assert "".join(pieces) == finished.text
    return pieces, finished


@pytest.mark.parametrize("question, answer", CHATS)
def test_greedy_answers_the_trained_chats_word_for_word(tiny, question, answer):
    _, finished = _run(tiny, question, GREEDY)
    assert finished.text == answer
    assert finished.stats.done_reason == "stop"
    assert finished.stats.prompt_tokens == len(_ids(tiny, question))
    assert finished.stats.generated_tokens == len(tiny.tokenizer(answer + "<|im_end|>")["input_ids"])
    assert finished.stats.prompt_eval_ns > 0 and finished.stats.eval_ns > 0
    assert finished.stats.total_ns >= finished.stats.prompt_eval_ns + finished.stats.eval_ns


def test_greedy_is_deterministic(tiny):
    assert _run(tiny, UNSEEN, GREEDY)[1].text == _run(tiny, UNSEEN, GREEDY)[1].text


def test_same_seed_same_output_other_seed_other_output(tiny):
    params = Parameters(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=30, seed=42)
    first = _run(tiny, UNSEEN, params)[1].text
    assert _run(tiny, UNSEEN, params)[1].text == first
    others = {_run(tiny, UNSEEN, params.model_copy(update={"seed": seed}))[1].text for seed in (1, 2, 3)}
    assert others - {first}


def test_top_k_one_is_greedy(tiny):
    sampled = Parameters(temperature=1.0, top_k=1, max_new_tokens=30, seed=7)
    greedy = GREEDY.model_copy(update={"max_new_tokens": 30})
    assert _run(tiny, UNSEEN, sampled)[1].text == _run(tiny, UNSEEN, greedy)[1].text


@pytest.mark.parametrize("change", [{"repetition_penalty": 3.0}, {"frequency_penalty": 2.0},
                                    {"presence_penalty": 2.0}])
def test_penalties_change_what_greedy_decoding_says(tiny, change):
    plain = _run(tiny, "hi", GREEDY)[1].text  # babble that repeats itself: penalties must change it
    assert _run(tiny, "hi", GREEDY.model_copy(update=change))[1].text != plain


def test_stop_string_from_the_greedy_output_cuts_it_exactly(tiny):
    question, answer = CHATS[4]
    stop = "robot"
    pieces, finished = _run(tiny, question, GREEDY.model_copy(update={"stop": ["zzz", stop]}))
    assert finished.text == answer[: answer.index(stop)]
    assert finished.stats.done_reason == "stop"
    for piece in pieces:
        assert not any(piece.endswith(stop[:size]) for size in range(1, len(stop))) or piece.strip() == ""


def test_a_stop_string_in_the_prompt_does_not_stop_the_answer(tiny):
    question, answer = CHATS[0]
    _, finished = _run(tiny, question, GREEDY.model_copy(update={"stop": ["assistant", "<|im_start|>"]}))
    assert finished.text == answer


def test_max_new_tokens_bounds_the_answer(tiny):
    _, finished = _run(tiny, CHATS[4][0], GREEDY.model_copy(update={"max_new_tokens": 5}))
    assert finished.stats.generated_tokens == 5 and finished.stats.done_reason == "length"
    assert CHATS[4][1].startswith(finished.text)


def test_the_context_bounds_the_answer(tiny):
    ids = _ids(tiny, CHATS[4][0])
    params = GREEDY.model_copy(update={"max_new_tokens": -1, "ctx": len(ids) + 3})
    *_, finished = stream(tiny, ids, params)
    assert finished.stats.generated_tokens == 3 and finished.stats.done_reason == "length"
    with pytest.raises(PromptTooLong):
        list(stream(tiny, ids, params.model_copy(update={"ctx": len(ids)})))


def test_an_error_in_generation_reaches_the_caller(tiny):
    with pytest.raises(IndexError):
        list(stream(tiny, [10**6], GREEDY))


def test_cancel_stops_generation(tiny):
    cancel = threading.Event()
    items = []
    for item in stream(tiny, _ids(tiny, CHATS[4][0]), GREEDY, cancel=cancel):
        items.append(item)
        cancel.set()
    finished = items[-1]
    assert finished.stats.done_reason == "cancel"
    assert finished.stats.generated_tokens < len(tiny.tokenizer(CHATS[4][1])["input_ids"])


def test_abandoning_the_stream_stops_the_worker(tiny):
    cancel = threading.Event()
    generator = stream(tiny, _ids(tiny, CHATS[4][0]), GREEDY, cancel=cancel)
    next(generator)
    generator.close()  # returns once the worker has stopped
    assert cancel.is_set()
    assert _run(tiny, CHATS[0][0], GREEDY)[1].text == CHATS[0][1]  # and the model is free for the next one


@pytest.mark.parametrize("narrow", [{"top_p": 0.001}, {"min_p": 1.0}])
def test_a_nucleus_or_min_p_of_one_token_is_greedy(tiny, narrow):
    greedy = GREEDY.model_copy(update={"max_new_tokens": 30})
    sampled = Parameters(temperature=1.5, top_k=0, max_new_tokens=30, seed=5, **narrow)
    assert _run(tiny, UNSEEN, sampled)[1].text == _run(tiny, UNSEEN, greedy)[1].text
    wide = sampled.model_copy(update={"top_p": 1.0, "min_p": 0.0})
    assert _run(tiny, UNSEEN, wide)[1].text != _run(tiny, UNSEEN, greedy)[1].text


def test_a_cancel_stops_the_pass_that_reads_the_prompt(tiny):
    """A long prompt is one forward pass: a cancel set while it runs stops it at the next layer, with no answer."""
    layers = tiny.model.base_model.layers
    cancel = threading.Event()
    ran: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda module, args, index=index: ran.append(index))
             for index, layer in enumerate(layers)]
    hooks.append(layers[0].register_forward_hook(lambda *_: cancel.set()))  # the client leaves meanwhile
    try:
        *pieces, finished = stream(tiny, _ids(tiny, CHATS[4][0]), GREEDY, cancel=cancel)
    finally:
        for hook in hooks:
            hook.remove()
    assert pieces == [] and finished.stats.done_reason == "cancel" and finished.stats.generated_tokens == 0
    assert ran == [0] and len(layers) > 1
    assert _run(tiny, CHATS[0][0], GREEDY)[1].text == CHATS[0][1]  # the model is whole for the next request


def test_num_predict_zero_generates_nothing(tiny):
    pieces, finished = _run(tiny, CHATS[0][0], GREEDY.model_copy(update={"max_new_tokens": 0}))
    assert pieces == [] and finished.text == "" and finished.stats.done_reason == "length"


def test_an_empty_prompt_is_refused(tiny):
    from hllama.errors import InvalidOption

    with pytest.raises(InvalidOption, match="the prompt has no tokens"):
        list(stream(tiny, [], GREEDY))


def _conversation_ids(tiny, turns: list[tuple[str, str | None]]) -> list[int]:
    messages = []
    for question, answer in turns:
        messages.append({"role": "user", "content": question})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return build_prompt(tiny.tokenizer, messages).ids


def test_a_follow_up_turn_reads_only_what_is_new(tiny):
    """The first turn's KV cache is kept; the second reads only its new tokens and answers as a cold run does."""
    tiny.prefixes.clear()
    (q1, a1), (q2, _) = CHATS[0], CHATS[3]
    *_, first = stream(tiny, _conversation_ids(tiny, [(q1, None)]), GREEDY)
    assert first.text == a1 and first.stats.cached_tokens == 0 and tiny.prefixes.bytes > 0
    follow_up = _conversation_ids(tiny, [(q1, a1), (q2, None)])
    *_, warm = stream(tiny, follow_up, GREEDY)
    assert warm.stats.cached_tokens >= first.stats.prompt_tokens
    assert warm.stats.evaluated_tokens == len(follow_up) - warm.stats.cached_tokens
    tiny.prefixes.clear()
    *_, cold = stream(tiny, follow_up, GREEDY)
    assert cold.stats.cached_tokens == 0 and cold.stats.evaluated_tokens == len(follow_up)
    assert warm.text == cold.text and warm.generated_ids == cold.generated_ids


def test_kept_caches_stay_within_their_bound_least_recently_used_first(tiny):
    from hllama.engine.prefix import PrefixCache

    kept = tiny.prefixes
    try:
        tiny.prefixes = probe = PrefixCache(2**40)
        list(stream(tiny, _ids(tiny, CHATS[0][0]), GREEDY))
        one = probe.bytes
        tiny.prefixes = bounded = PrefixCache(int(one * 1.5))  # room for one conversation of this length
        for question, _ in CHATS[:3]:
            list(stream(tiny, _ids(tiny, question), GREEDY))
            assert 0 < bounded.bytes <= bounded.max_bytes
        cache, reused = bounded.take(_ids(tiny, CHATS[2][0]) + [5])  # the newest is the one kept
        assert cache is not None and reused == len(_ids(tiny, CHATS[2][0]))
        assert bounded.take(_ids(tiny, CHATS[0][0]) + [5])[0] is None
        tiny.prefixes = PrefixCache(one // 2)  # a cache larger than the bound is not kept at all
        list(stream(tiny, _ids(tiny, CHATS[0][0]), GREEDY))
        assert tiny.prefixes.bytes == 0
    finally:
        tiny.prefixes = kept


def test_a_cancelled_answer_leaves_no_cache(tiny):
    tiny.prefixes.clear()
    cancel = threading.Event()
    for _ in stream(tiny, _ids(tiny, CHATS[4][0]), GREEDY, cancel=cancel):
        cancel.set()
    assert tiny.prefixes.bytes == 0
