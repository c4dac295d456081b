"""Batched decoding: requests to one model share each step, and each still gets exactly its own answer."""

import queue
import threading
import time

import pytest

from hllama.engine import Finished, build_prompt, stream
from hllama.engine.batch import batchable
from hllama.engine.events import END
from hllama.engine.generate import Generation
from hllama.options import Parameters

from .tinymodel import CHATS

GREEDY = Parameters(temperature=0.0, max_new_tokens=40)
QUESTIONS = [question for question, _ in CHATS] + ["Write about rivers.", "hi", "What do robots sing?"]


def _ids(tiny, question: str) -> list[int]:
    return build_prompt(tiny.tokenizer, [{"role": "user", "content": question}]).ids


class Running:
    """A generation started beside others, its pieces collected from the engine's thread."""

    def __init__(self, tiny, ids: list[int], params: Parameters, **kwargs) -> None:
        self.items: queue.Queue = queue.Queue()
        self.generation = Generation(tiny, ids, params, sink=self.items.put, **kwargs)

    def result(self) -> tuple[str, Finished]:
        pieces = []
        while (item := self.items.get(timeout=60)) is not END:
            if isinstance(item, BaseException):
                raise item
            pieces.append(item)
        self.generation.join()
        return "".join(pieces), self.generation.finished()


def _together(tiny, requests: list[tuple[list[int], Parameters, dict]]) -> list[Running]:
    running = [Running(tiny, ids, params, **kwargs) for ids, params, kwargs in requests]
    for each in running:
        each.generation.start()
    return running


def _alone(tiny, ids: list[int], params: Parameters, **kwargs) -> Finished:
    running = Running(tiny, ids, params, **kwargs)
    running.generation.start()
    return running.result()[1]


def test_the_tiny_model_is_batched(tiny):
    assert tiny.batcher is not None and batchable(tiny.model)


def test_greedy_answers_in_a_batch_equal_the_answers_alone(tiny):
    prompts = [_ids(tiny, question) for question in QUESTIONS]
    alone = [_alone(tiny, ids, GREEDY).text for ids in prompts]
    tiny.batcher.widest = 0
    running = _together(tiny, [(ids, GREEDY, {}) for ids in prompts])
    assert [each.result()[1].text for each in running] == alone
    assert tiny.batcher.widest >= 4  # they really shared steps (joining one by one, at different lengths)


def test_a_seed_gives_the_same_answer_alone_and_beside_seven_others(tiny):
    seeded = Parameters(temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.1,
                        presence_penalty=0.5, frequency_penalty=0.2, seed=1234, max_new_tokens=40)
    ids = _ids(tiny, "Write about rivers.")
    alone = _alone(tiny, ids, seeded).text
    others = [(_ids(tiny, question), Parameters(temperature=1.2, seed=index, max_new_tokens=40), {})
              for index, question in enumerate(QUESTIONS[:7])]
    running = _together(tiny, [*others[:3], (ids, seeded, {}), *others[3:]])
    results = [each.result()[1].text for each in running]
    assert results[3] == alone
    assert _alone(tiny, ids, seeded.model_copy(update={"seed": 99})).text != alone


def test_stops_penalties_and_logprobs_stay_per_row(tiny):
    story, answer = CHATS[4]
    requests = [
        (_ids(tiny, story), GREEDY.model_copy(update={"stop": ["robot"]}), {}),
        (_ids(tiny, "hi"), GREEDY.model_copy(update={"repetition_penalty": 3.0}), {}),
        (_ids(tiny, CHATS[0][0]), GREEDY, {"logprobs": 3}),
        (_ids(tiny, "hi"), GREEDY, {}),
        (_ids(tiny, CHATS[1][0]), GREEDY.model_copy(update={"max_new_tokens": 3}), {}),
    ]
    alone = [_alone(tiny, ids, params, **kwargs) for ids, params, kwargs in requests]
    together = [each.result()[1] for each in _together(tiny, requests)]
    assert together[0].text == answer[:answer.index("robot")] and together[0].stats.done_reason == "stop"
    assert together[1].text == alone[1].text != together[3].text  # the penalty applied to its row only
    assert [entry.token for entry in together[2].logprobs] == [entry.token for entry in alone[2].logprobs]
    for mine, reference in zip(together[2].logprobs, alone[2].logprobs, strict=True):
        assert mine.logprob == pytest.approx(reference.logprob, abs=1e-4) and len(mine.top) == 3
    assert together[3].logprobs == ()
    assert together[4].stats.generated_tokens == 3 and together[4].stats.done_reason == "length"
    assert [finished.text for finished in together] == [finished.text for finished in alone]


def test_a_failing_request_leaves_the_others_running(tiny):
    prompts = [_ids(tiny, question) for question in QUESTIONS[:3]]
    alone = [_alone(tiny, ids, GREEDY).text for ids in prompts]
    broken = [10**6]  # past the vocabulary: reading it fails
    running = _together(tiny, [(prompts[0], GREEDY, {}), (broken, GREEDY, {}),
                                *[(ids, GREEDY, {}) for ids in prompts[1:]]])
    with pytest.raises(IndexError):
        running[1].result()
    assert [running[at].result()[1].text for at in (0, 2, 3)] == alone


def test_a_cancelled_row_leaves_at_once_while_the_others_go_on(tiny):
    long = Parameters(temperature=0.0, max_new_tokens=200)
    prompts = [_ids(tiny, question) for question in QUESTIONS[5:8]]
    alone = [_alone(tiny, ids, long).text for ids in prompts]
    running = _together(tiny, [(_ids(tiny, "hi"), long, {}), *[(ids, long, {}) for ids in prompts]])
    leaving = running[0]
    leaving.items.get(timeout=60)  # its first piece: it is in the batch
    leaving.generation.cancel.set()
    leaving.generation.join()
    still_running = [len(each.generation.worker.ids) < 200 and not each.generation._row.ended.is_set()
                     for each in running[1:]]
    assert any(still_running)
    assert leaving.generation.finished().stats.done_reason == "cancel"
    assert [each.result()[1].text for each in running[1:]] == alone


def test_a_row_cancelled_before_it_joined_never_runs(tiny):
    cancel = threading.Event()
    cancel.set()
    finished = _alone(tiny, _ids(tiny, "hi"), GREEDY, cancel=cancel)
    assert finished.stats.generated_tokens == 0 and finished.stats.done_reason == "cancel"


def test_a_long_prompt_joins_in_chunks_without_stalling_the_others(tiny, monkeypatch):
    monkeypatch.setattr(tiny.batcher, "chunk", 8)
    long_question = " ".join(question for question, _ in CHATS)
    ids = _ids(tiny, long_question)
    assert len(ids) > 3 * 8
    alone = _alone(tiny, ids, GREEDY).text
    other = _alone(tiny, _ids(tiny, "hi"), GREEDY).text
    running = _together(tiny, [(_ids(tiny, "hi"), GREEDY, {}), (ids, GREEDY, {})])
    assert [each.result()[1].text for each in running] == [other, alone]


def test_a_follow_up_turn_in_a_batch_reuses_its_cache_and_answers_as_a_cold_run(tiny):
    question, answer = CHATS[0]
    first = [{"role": "user", "content": question}]
    stream_items = list(stream(tiny, build_prompt(tiny.tokenizer, first).ids, GREEDY))
    assert stream_items[-1].text == answer
    follow = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": CHATS[1][0]}]
    ids = build_prompt(tiny.tokenizer, follow).ids
    warm, _ = (running.result()[1] for running in _together(tiny, [(ids, GREEDY, {}),
                                                                         (_ids(tiny, "hi"), GREEDY, {})]))
    assert warm.stats.cached_tokens > len(build_prompt(tiny.tokenizer, first).ids) - 2
    tiny.prefixes.clear()
    cold = _alone(tiny, ids, GREEDY)
    assert cold.stats.cached_tokens == 0 and cold.text == warm.text


def test_models_whose_cache_cannot_be_merged_keep_generate():
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    shape = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1)
    assert batchable(LlamaForCausalLM(LlamaConfig(**shape)))
    assert not batchable(MistralForCausalLM(MistralConfig(**shape, sliding_window=8)))


def test_the_loop_ends_when_idle_and_starts_again(tiny):
    _alone(tiny, _ids(tiny, "hi"), GREEDY)
    deadline = time.monotonic() + 5
    while tiny.batcher._looping and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not tiny.batcher._looping and tiny.batcher.rows == []
    assert _alone(tiny, _ids(tiny, CHATS[0][0]), GREEDY).text == CHATS[0][1]


def test_short_prompts_arriving_together_are_read_in_one_pass(tiny):
    passes: list[tuple[int, int]] = []
    hook = tiny.model.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        prompts = [_ids(tiny, question) for question in QUESTIONS[:4]]
        alone = [_alone(tiny, ids, GREEDY).text for ids in prompts]
        passes.clear()
        running = _together(tiny, [(ids, GREEDY, {}) for ids in prompts])
        assert [each.result()[1].text for each in running] == alone
    finally:
        hook.remove()
    reading = [shape for shape in passes if shape[1] > 1]  # passes that read prompts, not single decode steps
    assert len(reading) < len(prompts) and max(rows for rows, _ in reading) > 1  # the first may start alone


def test_models_that_are_not_batched_answer_the_same_through_generate(tiny, monkeypatch):
    """The path a sliding-window or hybrid model takes: one ``generate`` per request, with the same chain."""
    prompts = [_ids(tiny, question) for question, _ in CHATS]
    whole = GREEDY.model_copy(update={"max_new_tokens": 60})
    batched = [_alone(tiny, ids, whole).text for ids in prompts]
    stopped = GREEDY.model_copy(update={"stop": ["robot"]})
    seeded = Parameters(temperature=0.9, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.1,
                        presence_penalty=0.5, frequency_penalty=0.2, seed=77, max_new_tokens=40)
    windowed = seeded.model_copy(update={"repetition_penalty": 5.0, "repeat_last_n": 6, "seed": 5})
    sampled = [_alone(tiny, _ids(tiny, "Write about rivers."), params).text for params in (seeded, windowed)]
    monkeypatch.setattr(tiny, "batcher", None)
    assert [_alone(tiny, _ids(tiny, "Write about rivers."), params).text
            for params in (seeded, windowed)] == sampled  # one draw, both paths
    running = _together(tiny, [(ids, whole, {}) for ids in prompts])
    assert [each.result()[1].text for each in running] == batched == [answer for _, answer in CHATS]
    story, answer = CHATS[4]
    assert _alone(tiny, _ids(tiny, story), stopped).text == answer[:answer.index("robot")]
    with_logprobs = _alone(tiny, prompts[0], GREEDY, logprobs=2)
    assert len(with_logprobs.logprobs) == with_logprobs.stats.generated_tokens - 1  # the end token has none
