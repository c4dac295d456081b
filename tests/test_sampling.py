import torch
from transformers import MinPLogitsWarper, TemperatureLogitsWarper

from hllama.engine.sampling import PresenceFrequencyPenalty, RecentRepetitionPenalty, SeededSampler, logits_processors
from hllama.options import BUILTIN_PARAMETERS, Parameters


def test_presence_and_frequency_penalties_follow_openai():
    # prompt: tokens 0 and 1; generated: 2, 2, 3
    input_ids = torch.tensor([[0, 1, 2, 2, 3]])
    scores = torch.zeros(1, 5)
    out = PresenceFrequencyPenalty(presence=0.5, frequency=0.25, prompt_length=2)(input_ids, scores)
    # token 2: 2 × 0.25 + 0.5; token 3: 1 × 0.25 + 0.5; prompt tokens 0 and 1 are not counted
    assert out.tolist() == [[0.0, 0.0, -1.0, -0.75, 0.0]]


def test_negative_penalties_encourage_repetition():
    input_ids = torch.tensor([[7, 1]])
    out = PresenceFrequencyPenalty(presence=-1.0, frequency=0.0, prompt_length=1)(input_ids, torch.zeros(1, 3))
    assert out.tolist() == [[0.0, 1.0, 0.0]]


def test_penalties_work_per_row():
    input_ids = torch.tensor([[0, 1, 1], [0, 2, 2]])
    out = PresenceFrequencyPenalty(presence=0.0, frequency=1.0, prompt_length=1)(input_ids, torch.zeros(2, 3))
    assert out.tolist() == [[0.0, -2.0, 0.0], [0.0, 0.0, -2.0]]


def test_seeded_sampler_leaves_one_token_and_repeats_with_its_seed():
    scores = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    draws = []
    for _ in range(2):
        sampler = SeededSampler(seed=1234)
        draws.append([int(sampler(torch.tensor([[0]]), scores).argmax()) for _ in range(20)])
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 1  # it samples, it does not pick the maximum
    one = SeededSampler(seed=1)(torch.tensor([[0]]), scores)
    assert torch.isfinite(one).sum() == 1


def test_seed_is_independent_of_global_random_state():
    scores = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    first = [int(SeededSampler(seed=9)(torch.tensor([[0]]), scores).argmax()) for _ in range(5)]
    torch.manual_seed(2)
    torch.rand(100)
    second = [int(SeededSampler(seed=9)(torch.tensor([[0]]), scores).argmax()) for _ in range(5)]
    assert first == second


def test_temperature_zero_is_greedy():
    processors = logits_processors(BUILTIN_PARAMETERS.model_copy(update={"temperature": 0.0}), prompt_length=1)
    assert len(processors) == 0


def test_processors_follow_the_parameters():
    params = Parameters(temperature=0.7, top_k=0, top_p=1.0, min_p=0.1, repetition_penalty=1.2,
                        presence_penalty=0.5, frequency_penalty=0.0, seed=3)
    kinds = [type(processor) for processor in logits_processors(params, prompt_length=4)]
    assert kinds == [RecentRepetitionPenalty, PresenceFrequencyPenalty, TemperatureLogitsWarper,
                     MinPLogitsWarper, SeededSampler]
