"""The context window: room for the answer when older turns are dropped, and answers that go on when it fills."""

import queue

import httpx
import pytest

from hllama.cli import main
from hllama.config import load_settings
from hllama.engine import build_prompt
from hllama.engine.events import END
from hllama.engine.generate import Generation
from hllama.engine.prompt import UNLIMITED_ANSWER_ROOM, answer_room
from hllama.errors import PromptTooLong
from hllama.options import Parameters

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID

GREEDY = Parameters(temperature=0.0, max_new_tokens=-1)
HISTORY = [message for question, answer in CHATS[:4] for message in (
    {"role": "user", "content": question}, {"role": "assistant", "content": answer})]
STORY = [{"role": "system", "content": "Be kind."}, *HISTORY, {"role": "user", "content": CHATS[4][0]}]


def test_the_answer_room_is_num_predict_up_to_half_the_window_else_a_quarter():
    assert answer_room(100, 1000) == 100 and answer_room(900, 1000) == 500 and answer_room(0, 1000) == 0
    assert answer_room(-1, 1000) == answer_room(None, 1000) == 250
    assert answer_room(-1, 32768) == UNLIMITED_ANSWER_ROOM and answer_room(-1, None) == 0


def test_dropping_turns_leaves_the_answer_its_room(tiny):
    whole = build_prompt(tiny.tokenizer, STORY)
    ctx = len(whole.ids) + 10
    assert build_prompt(tiny.tokenizer, STORY, ctx=ctx).dropped_turns == 0  # without a reserve it all fits
    prompt = build_prompt(tiny.tokenizer, STORY, ctx=ctx, reserve=60)
    assert len(prompt.ids) + 60 <= ctx and prompt.messages[0] == STORY[0] and prompt.messages[-1] == STORY[-1]
    one_fewer = build_prompt(tiny.tokenizer, STORY[:1] + STORY[1 + 2 * (prompt.dropped_turns - 1):])
    assert len(one_fewer.ids) + 60 > ctx  # the fewest turns dropped that leave the room


def test_where_even_the_newest_turn_leaves_less_room_it_gets_what_is_left(tiny):
    newest = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-1:])
    prompt = build_prompt(tiny.tokenizer, STORY, ctx=len(newest.ids) + 5, reserve=50)
    assert prompt.ids == newest.ids and prompt.refit is None  # no turn is left to drop


def test_refit_drops_more_turns_for_more_room_until_none_is_left(tiny):
    ctx = 200
    prompt = build_prompt(tiny.tokenizer, STORY, ctx=ctx, reserve=10)
    room = ctx - len(prompt.ids) + 20  # what it leaves free, and 20 tokens more
    wider = prompt.refit(room)
    assert wider is not None and wider.dropped_turns > prompt.dropped_turns and len(wider.ids) + room <= ctx
    assert wider.messages[0] == STORY[0] and wider.messages[-1] == STORY[-1]
    assert prompt.refit(ctx) is None  # nothing leaves the whole window free


def test_truncate_false_refuses_rather_than_drops(tiny):
    whole = build_prompt(tiny.tokenizer, STORY)
    with pytest.raises(PromptTooLong, match="with no turn dropped"):
        build_prompt(tiny.tokenizer, STORY, ctx=len(whole.ids), truncate=False)
    assert build_prompt(tiny.tokenizer, STORY, ctx=len(whole.ids) + 1, truncate=False).ids == whole.ids


def _answer(tiny, prompt_ids: list[int], params: Parameters, refit=None) -> tuple[Generation, list[int]]:
    items: queue.Queue = queue.Queue()
    generation = Generation(tiny, prompt_ids, params, sink=items.put, refit=refit).start()
    while (item := items.get(timeout=60)) is not END:
        if isinstance(item, BaseException):
            raise item
    generation.join()
    return generation, generation.finished().generated_ids


def _greedy(tiny, ids: list[int], count: int) -> list[int]:
    """``count`` greedy tokens after ``ids`` (or fewer, up to the end token), read in one plain pass each."""
    import torch

    out = list(ids)
    eos = tiny.model.generation_config.eos_token_id
    for _ in range(count):
        with torch.inference_mode():
            token = int(tiny.model(torch.tensor([out])).logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
    return out[len(ids):]


@pytest.mark.parametrize("batched", [True, False])
def test_an_answer_that_fills_the_window_goes_on_after_a_shorter_prompt(tiny, monkeypatch, batched):
    if not batched:
        monkeypatch.setattr(tiny, "batcher", None)
    first = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-3:]).ids  # one earlier turn, then the question
    shorter = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-1:]).ids
    ctx = len(first) + 6
    asked: list[int] = []

    def refit(room: int) -> list[int] | None:
        asked.append(room)
        return shorter if len(shorter) + room <= ctx else None

    generation, answer = _answer(tiny, first, GREEDY.model_copy(update={"ctx": ctx}), refit)
    expected = _greedy(tiny, first, 6)
    expected += _greedy(tiny, shorter + expected, ctx - len(shorter) - 6)
    assert answer == expected and len(answer) > 6 and generation.shifts == 1
    assert asked[0] == 6 + answer_room(-1, ctx) and generation.prompt_ids == shorter
    reason = generation.finished().stats.done_reason
    assert reason == ("stop" if answer[-1] == tiny.model.generation_config.eos_token_id else "length")
    stopped, cut = _answer(tiny, first, GREEDY.model_copy(update={"ctx": ctx}))  # no refit: it ends there
    assert cut == expected[:6] and stopped.finished().stats.done_reason == "length" and stopped.shifts == 0


def test_a_shifted_answer_draws_the_same_in_a_batch_and_through_generate(tiny, monkeypatch):
    first = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-3:]).ids
    shorter = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-1:]).ids
    ctx = len(first) + 5
    params = Parameters(temperature=1.1, top_k=50, seed=9, repetition_penalty=1.3, repeat_last_n=8,
                        presence_penalty=0.4, frequency_penalty=0.3, max_new_tokens=30, ctx=ctx)

    def refit(room: int) -> list[int] | None:
        return shorter if len(shorter) + room <= ctx else None

    batched, in_a_batch = _answer(tiny, first, params, refit)
    monkeypatch.setattr(tiny, "batcher", None)
    alone, through_generate = _answer(tiny, first, params, refit)
    assert batched.shifts == alone.shifts == 1 and in_a_batch == through_generate and len(in_a_batch) > 5


def test_num_predict_still_bounds_a_shifted_answer(tiny):
    first = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-3:]).ids
    shorter = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-1:]).ids
    ctx = len(first) + 4
    params = GREEDY.model_copy(update={"ctx": ctx, "max_new_tokens": 7})
    generation, answer = _answer(tiny, first, params, lambda room: shorter if len(shorter) + room <= ctx else None)
    assert len(answer) <= 7 and generation.shifts == 1
    if answer[-1] != tiny.model.generation_config.eos_token_id:
        assert len(answer) == 7 and generation.finished().stats.done_reason == "length"


@pytest.fixture
def url(tiny_cache, hllama_home):
    assert main(["create", "--alias", "tiny", "--model", REPO_ID, "--temperature", "0"]) == 0
    with live_server(load_settings()) as base:
        yield base


def test_ollamas_truncate_and_shift_fields(url: str):
    """Through /api/chat: truncate false refuses what does not fit; shift false ends an answer where it fills the
    window; by default it goes on after more of the oldest turns are dropped."""
    chat = [{"role": "system", "content": "Be kind."}, *[{"role": role, "content": text} for _ in range(6)
            for role, text in (("user", "hi"), ("assistant", "ok"))], {"role": "user", "content": CHATS[4][0]}]
    ctx = 96

    def ask(**fields) -> httpx.Response:
        return httpx.post(f"{url}/api/chat", timeout=60, json={
            "model": "tiny", "stream": False, "messages": chat, "options": {"num_ctx": ctx}, **fields})

    refused = ask(truncate=False, options={"num_ctx": 40})
    assert refused.status_code == 400 and "with no turn dropped" in refused.json()["error"]
    held, shifted = ask(shift=False).json(), ask().json()
    assert held["prompt_eval_count"] <= ctx - answer_room(-1, ctx)  # older turns were dropped to leave the room
    assert held["done_reason"] == "length" and held["prompt_eval_count"] + held["eval_count"] == ctx
    assert shifted["eval_count"] > held["eval_count"] and shifted["done_reason"] == "stop"
    assert shifted["message"]["content"].startswith(held["message"]["content"])


def test_a_refit_that_fails_ends_only_its_own_answer(tiny):
    first = build_prompt(tiny.tokenizer, STORY[:1] + STORY[-3:]).ids
    ctx = len(first) + 4

    def broken(room: int) -> list[int] | None:
        raise ValueError("the template cannot render this")

    others = [Generation(tiny, build_prompt(tiny.tokenizer, [{"role": "user", "content": question}]).ids,
                         GREEDY.model_copy(update={"max_new_tokens": 40}), sink=lambda item: None).start()
              for question, _ in CHATS[:2]]
    generation, answer = _answer(tiny, first, GREEDY.model_copy(update={"ctx": ctx}), broken)
    assert len(answer) == 4 and generation.finished().stats.done_reason == "length"
    for other in others:
        other.join()
        assert other.finished().text in (CHATS[0][1], CHATS[1][1])  # the batch went on
