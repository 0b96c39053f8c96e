"""Sampling parameters against server defaults, and token choice."""

from __future__ import annotations

import pytest
import torch
from llmstream_inference.sampling import Defaults, ParameterError, Sampler, pick_batch, resolve

from llmstream.wire import SamplingParams

DEFAULTS = Defaults(max_new_tokens=32, temperature=0.7, top_p=0.9, max_new_tokens_limit=64)


def test_unset_parameters_take_the_server_defaults() -> None:
    resolved = resolve(SamplingParams(), DEFAULTS)
    assert (resolved.max_new_tokens, resolved.temperature, resolved.top_p) == (32, 0.7, 0.9)
    assert resolved.do_sample


def test_temperature_zero_is_greedy_even_if_sampling_was_asked() -> None:
    resolved = resolve(SamplingParams(temperature=0, do_sample=True), DEFAULTS)
    assert not resolved.do_sample
    assert resolved.is_plain_greedy


def test_max_new_tokens_above_the_limit_is_refused_naming_the_field() -> None:
    with pytest.raises(ParameterError) as info:
        resolve(SamplingParams(max_new_tokens=65), DEFAULTS)
    assert info.value.field == "params.max_new_tokens"
    assert "64" in str(info.value)


def test_same_seed_same_choices() -> None:
    logits = torch.randn(100)
    params = resolve(SamplingParams(temperature=1.0, seed=7), DEFAULTS)
    first = [Sampler(params, torch.device("cpu")).pick(logits, [1]) for _ in range(3)]
    again = [Sampler(params, torch.device("cpu")).pick(logits, [1]) for _ in range(3)]
    assert first == again


def test_top_k_one_always_picks_the_best_token() -> None:
    logits = torch.randn(50)
    sampler = Sampler(
        resolve(SamplingParams(temperature=1.5, top_k=1), DEFAULTS), torch.device("cpu")
    )
    assert {sampler.pick(logits, [0]) for _ in range(20)} == {int(logits.argmax())}


def test_repetition_penalty_moves_greedy_away_from_seen_tokens() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0])
    plain = Sampler(resolve(SamplingParams(temperature=0), DEFAULTS), torch.device("cpu"))
    penalised = Sampler(
        resolve(SamplingParams(temperature=0, repetition_penalty=2.0), DEFAULTS),
        torch.device("cpu"),
    )
    assert plain.pick(logits, [0]) == 0
    assert penalised.pick(logits, [0]) == 1


def test_batch_pick_matches_row_by_row_choices() -> None:
    logits = torch.randn(3, 40)
    greedy = Sampler(resolve(SamplingParams(temperature=0), DEFAULTS), torch.device("cpu"))
    penalised = Sampler(
        resolve(SamplingParams(temperature=0, repetition_penalty=1.5), DEFAULTS),
        torch.device("cpu"),
    )
    samplers = [greedy, penalised, greedy]
    histories = [[1], [int(logits[1].argmax())], [2]]
    expected = [s.pick(logits[i], histories[i]) for i, s in enumerate(samplers)]
    assert pick_batch(logits, samplers, histories) == expected


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1e-320),
        SamplingParams(temperature=1e-300, top_p=0.5, top_k=5),
        SamplingParams(temperature=1.0, repetition_penalty=1e-300),
        SamplingParams(temperature=1e-45, repetition_penalty=1e-300),
    ],
)
def test_extreme_but_legal_parameters_pick_the_limit_token_instead_of_failing(params) -> None:
    """Their scores overflow and softmax yields NaN; multinomial would raise on it."""
    logits = torch.tensor([0.5, 3.0, -1.0, 2.0, 1.0])
    sampler = Sampler(resolve(params, DEFAULTS), torch.device("cpu"))
    for history in ([0], [1], [1, 3]):
        token = sampler.pick(logits, history)
        assert 0 <= token < 5


def test_a_degenerate_distribution_falls_back_to_the_best_token() -> None:
    from llmstream_inference.sampling import limit_pick

    logits = torch.tensor([0.5, 3.0, -1.0])
    inf, nan = float("inf"), float("nan")
    assert limit_pick(torch.tensor([[1.0, inf, nan]]), logits) == 1
    assert limit_pick(torch.tensor([[nan, nan, nan]]), logits) == 1  # the model's own choice
    assert limit_pick(torch.tensor([[-inf, -inf, 2.0]]), logits) == 2


def test_a_failing_row_is_returned_as_its_error_and_the_others_still_pick() -> None:
    logits = torch.randn(2, 10)
    good = Sampler(resolve(SamplingParams(temperature=1.0, seed=1), DEFAULTS), torch.device("cpu"))
    bad = Sampler(resolve(SamplingParams(temperature=1.0, seed=2), DEFAULTS), torch.device("cpu"))
    bad.pick = lambda logits, history: (_ for _ in ()).throw(RuntimeError("poisoned"))  # type: ignore[method-assign]
    picked = pick_batch(logits, [good, bad], [[0], [0]])
    assert isinstance(picked[0], int)
    assert isinstance(picked[1], RuntimeError)


def greedy_sampler(eos: int = 9, prompt: int = 2, **fields: object) -> Sampler:
    params = SamplingParams.model_validate({"temperature": 0, **fields})
    sampling = resolve(params, DEFAULTS)
    assert not sampling.is_plain_greedy  # these rows take the per-row path, not the batch argmax
    return Sampler(sampling, torch.device("cpu"), eos_ids=frozenset({eos}), prompt_tokens=prompt)


def test_logit_bias_moves_the_named_token_and_ignores_ids_past_the_vocabulary() -> None:
    logits = torch.zeros(10)
    logits[3] = 5.0
    assert greedy_sampler(logit_bias={"7": 6.0, "123456": 100.0}).pick(logits, [1, 1]) == 7
    assert greedy_sampler(logit_bias={"3": -100.0}).pick(logits, [1, 1]) != 3


def test_presence_and_frequency_penalties_count_the_output_not_the_prompt() -> None:
    logits = torch.zeros(10)
    logits[4], logits[5] = 3.0, 2.5
    # Token 4 is in the prompt only: no penalty, it stays the choice.
    assert greedy_sampler(presence_penalty=1.0).pick(logits, [4, 4]) == 4
    # Once in the output, presence (1.0) takes it below token 5.
    assert greedy_sampler(presence_penalty=1.0).pick(logits, [1, 1, 4]) == 5
    # Frequency counts each appearance: 0.3 twice takes it below 5, once does not.
    assert greedy_sampler(frequency_penalty=0.3).pick(logits, [1, 1, 4]) == 4
    assert greedy_sampler(frequency_penalty=0.3).pick(logits, [1, 1, 4, 4]) == 5
    # A negative penalty favours what was said.
    assert greedy_sampler(presence_penalty=-1.0).pick(logits, [1, 1, 5]) == 5


def test_eos_is_held_back_until_min_new_tokens_and_always_with_ignore_eos() -> None:
    logits = torch.zeros(10)
    logits[9] = 10.0  # the EOS token is the model's choice
    held = greedy_sampler(min_new_tokens=2, max_new_tokens=4)
    assert held.pick(logits, [1, 1]) != 9
    assert held.pick(logits, [1, 1, 3]) != 9
    assert held.pick(logits, [1, 1, 3, 3]) == 9  # two tokens out: EOS may end it now
    assert greedy_sampler(ignore_eos=True).pick(logits, [1, 1, 3, 3, 3]) != 9


def test_min_new_tokens_above_max_new_tokens_is_refused_naming_the_field() -> None:
    with pytest.raises(ParameterError) as info:
        resolve(SamplingParams(min_new_tokens=40), DEFAULTS)
    assert info.value.field == "params.min_new_tokens"
