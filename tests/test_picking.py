"""The batched sampling chain against transformers' own processors, row by row."""

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hllama.engine.picking import CANDIDATES, RowSampler, kept, penalised, pick
from hllama.engine.sampling import PresenceFrequencyPenalty, RecentRepetitionPenalty, logits_processors
from hllama.options import Parameters

VOCAB = 3000  # wider than CANDIDATES, so rows whose kept tokens reach past them take the whole-vocabulary path


def _logits(rows: int, seed: int = 0, spread: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * spread


def _transformers_kept(scores: torch.Tensor, params: Parameters) -> torch.Tensor:
    chain = LogitsProcessorList()
    if params.temperature not in (None, 1.0):
        chain.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        chain.append(TopKLogitsWarper(params.top_k))
    if params.top_p is not None and params.top_p < 1.0:
        chain.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        chain.append(MinPLogitsWarper(params.min_p))
    return torch.isfinite(chain(torch.zeros(1, 1, dtype=torch.long), scores.clone()))


SETTINGS = [
    Parameters(temperature=0.8, top_k=40),
    Parameters(temperature=0.7, top_p=0.9),
    Parameters(temperature=1.0, top_p=0.999),  # keeps far more than CANDIDATES tokens
    Parameters(temperature=1.3, min_p=0.05),
    Parameters(temperature=1.0, min_p=1e-6),  # likewise
    Parameters(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05),
    Parameters(temperature=0.5, top_k=2500, top_p=0.95),
]


@pytest.mark.parametrize("params", SETTINGS)
def test_the_kept_tokens_are_the_ones_transformers_keeps(params):
    scores = _logits(4, spread=1.0 if params.min_p == 1e-6 else 3.0)
    sampler = RowSampler(params, [], vocab_size=VOCAB)
    for row in range(4):
        tempered = scores[row:row + 1] / params.temperature
        assert torch.equal(kept(tempered, [sampler]), _transformers_kept(scores[row:row + 1], params))


@pytest.mark.parametrize("top_k", [5, 0])
def test_every_draw_is_a_kept_token_and_follows_the_probabilities(top_k):
    params = Parameters(temperature=1.0, top_k=top_k, seed=3)
    sampler = RowSampler(params, [], vocab_size=VOCAB)
    scores = _logits(1)
    scores[0, :5] += 12  # five likely tokens, the rest of the vocabulary about 1% together
    allowed = set(scores[0].topk(5).indices.tolist()) if top_k else set(range(VOCAB))
    candidates = scores[0] if not top_k else scores[0].topk(5).values
    probabilities = torch.softmax(candidates, dim=-1).sort(descending=True).values
    draws = []
    for _ in range(4000):
        draws.append(pick(scores.clone(), [sampler])[0])
        sampler.accept(draws[-1])  # the next step draws new noise
    assert set(draws) <= allowed
    top = int(scores[0].argmax())
    assert abs(draws.count(top) / len(draws) - float(probabilities[0])) < 0.03


def test_a_rows_draw_does_not_depend_on_the_rows_beside_it():
    params = Parameters(temperature=0.9, top_p=0.95, top_k=50, seed=11)
    scores = _logits(8, seed=5)
    alone = RowSampler(params, [], vocab_size=VOCAB)
    crowded = RowSampler(params, [], vocab_size=VOCAB)
    others = [(0.0, 0), (1.2, 0), (0.5, 2000), (1.0, 10), (0.7, 0), (2.0, 1), (0.0, 0)]  # (temperature, top_k)
    neighbours = [RowSampler(Parameters(temperature=t, top_k=k, seed=i), [], vocab_size=VOCAB)
                  for i, (t, k) in enumerate(others)]
    rows = [*neighbours[:3], crowded, *neighbours[3:]]
    for _ in range(20):
        own = pick(scores[3:4].clone(), [alone])[0]
        together = pick(scores.clone(), rows)
        assert together[3] == own
        alone.accept(own)
        for sampler, token in zip(rows, together, strict=True):
            sampler.accept(token)


def test_greedy_rows_take_the_best_token_and_temperature_zero_never_samples():
    scores = _logits(3)
    samplers = [RowSampler(Parameters(temperature=0.0), [], vocab_size=VOCAB) for _ in range(3)]
    assert pick(scores.clone(), samplers) == scores.argmax(dim=-1).tolist()


def test_penalties_match_transformers_and_the_openai_definition():
    scores = _logits(2)
    history = [5, 9, 9, 42]
    prompt, answer = history[:1], history[1:]
    repetition = RowSampler(Parameters(temperature=0.0, repetition_penalty=1.7), prompt, vocab_size=VOCAB)
    openai = RowSampler(Parameters(temperature=0.0, presence_penalty=0.8, frequency_penalty=0.6), prompt,
                        vocab_size=VOCAB)
    for token in answer:
        repetition.accept(token)
        openai.accept(token)
    ids = torch.tensor([history])
    openai_reference = PresenceFrequencyPenalty(presence=0.8, frequency=0.6, prompt_length=1)
    expected = torch.cat([RepetitionPenaltyLogitsProcessor(1.7)(ids, scores[:1].clone()),
                          openai_reference(ids, scores[1:].clone())])
    torch.testing.assert_close(penalised(scores, [repetition, openai]), expected)


@pytest.mark.parametrize("window", [3, 1, -1])
def test_the_repetition_penalty_reads_only_the_latest_repeat_last_n_tokens(window):
    """Ollama's repeat_last_n: the window slides over prompt and answer; -1 is the whole context."""
    scores = _logits(1)
    prompt, answer = [11, 12, 13, 14], [15, 11, 16]
    sampler = RowSampler(Parameters(temperature=0.0, repetition_penalty=1.7, repeat_last_n=window), prompt,
                         vocab_size=VOCAB)
    history = list(prompt)
    for token in answer:
        sampler.accept(token)
        history.append(token)
        recent = torch.tensor([history if window == -1 else history[-window:]])
        expected = RepetitionPenaltyLogitsProcessor(1.7)(recent, scores.clone())
        torch.testing.assert_close(penalised(scores, [sampler]), expected)
    assert RecentRepetitionPenalty(1.7, window)(torch.tensor([history]), scores.clone()).equal(
        penalised(scores, [sampler]))


def test_repeat_last_n_zero_turns_the_repetition_penalty_off():
    sampler = RowSampler(Parameters(temperature=0.0, repetition_penalty=1.7, repeat_last_n=0), [1, 2, 3],
                         vocab_size=VOCAB)
    assert not sampler.penalises
    assert not any(isinstance(each, RecentRepetitionPenalty) for each in logits_processors(
        Parameters(temperature=0.0, repetition_penalty=1.7, repeat_last_n=0), prompt_length=3))


def test_infinite_and_nan_scores_never_break_a_draw():
    scores = _logits(2)
    scores[0, 7] = float("inf")
    scores[1, :] = float("nan")
    scores[1, 3] = 1.0
    samplers = [RowSampler(Parameters(temperature=1.0, top_p=0.9, seed=1), [], vocab_size=VOCAB) for _ in range(2)]
    assert pick(scores, samplers) == [7, 3]


def test_candidates_are_fewer_than_the_test_vocabulary():
    assert CANDIDATES < VOCAB
