"""Per-request sampling: resolving parameters against server defaults and picking tokens.

The logits processors are transformers' own (repetition penalty, temperature, top-k, top-p);
greedy rows without a penalty, the common case, are decided for the whole batch in one argmax.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmstream import defaults
from llmstream.wire import SamplingParams


class ParameterError(ValueError):
    """A request parameter the server cannot honour; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Defaults:
    """Server-side defaults and limits applied to every request."""

    max_new_tokens: int = defaults.DEFAULT_MAX_NEW_TOKENS
    temperature: float = defaults.DEFAULT_TEMPERATURE
    top_p: float = defaults.DEFAULT_TOP_P
    max_new_tokens_limit: int = defaults.MAX_NEW_TOKENS_LIMIT


@dataclass(frozen=True)
class ResolvedSampling:
    """Sampling parameters with every default filled in."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None

    @property
    def is_plain_greedy(self) -> bool:
        return not self.do_sample and self.repetition_penalty == 1.0


def resolve(params: SamplingParams, defaults: Defaults) -> ResolvedSampling:
    """Fill request parameters from the server defaults; refuse values beyond its limits."""
    max_new = params.max_new_tokens or defaults.max_new_tokens
    if max_new > defaults.max_new_tokens_limit:
        raise ParameterError(
            "params.max_new_tokens",
            f"{max_new} is above this server's limit of {defaults.max_new_tokens_limit}",
        )
    temperature = defaults.temperature if params.temperature is None else params.temperature
    do_sample = params.do_sample if params.do_sample is not None else temperature > 0
    if do_sample and temperature == 0:
        do_sample = False  # temperature 0 means greedy whatever do_sample says
    return ResolvedSampling(
        max_new_tokens=min(max_new, defaults.max_new_tokens_limit),
        do_sample=do_sample,
        temperature=temperature,
        top_p=defaults.top_p if params.top_p is None else params.top_p,
        top_k=params.top_k,
        repetition_penalty=params.repetition_penalty,
        stop=tuple(params.stop),
        seed=params.seed,
    )


class Sampler:
    """Chooses the next token of one sequence from its logits row."""

    def __init__(self, sampling: ResolvedSampling, device: torch.device) -> None:
        self.sampling = sampling
        processors = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        if sampling.do_sample:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k > 0:
                processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
        self._processors = processors
        self._generator: torch.Generator | None = None
        if sampling.do_sample:
            self._generator = torch.Generator(device=device)
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(63)
            self._generator.manual_seed(seed)

    def pick(self, logits: torch.Tensor, history: list[int]) -> int:
        """Next token from `logits` [vocab] given the tokens so far (prompt + output)."""
        scores = logits.unsqueeze(0).float()
        if self._processors:
            ids = torch.tensor([history], dtype=torch.long, device=logits.device)
            scores = self._processors(ids, scores)  # type: ignore[arg-type]
        if not self.sampling.do_sample:
            return int(scores.argmax(dim=-1).item())
        probs = torch.softmax(scores, dim=-1)
        if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0.0:
            return limit_pick(scores, logits)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())


def limit_pick(scores: torch.Tensor, logits: torch.Tensor) -> int:
    """The token sampling tends to when the processed scores are degenerate.

    Legal but extreme parameters (a temperature of 1e-300, a repetition penalty of 1e-300)
    overflow the scores to infinity, and softmax turns `inf - inf` into NaN, which
    `torch.multinomial` refuses. Their limit is all mass on the best token: the highest score
    (an infinite one counts), or the model's own argmax when no score is left.
    """
    cleaned = torch.nan_to_num(scores.float(), nan=float("-inf"))
    if bool(torch.isinf(cleaned).all()) and float(cleaned.max()) < 0:
        return int(logits.argmax().item())
    return int(cleaned.argmax().item())


def pick_batch(
    logits: torch.Tensor, samplers: list[Sampler], histories: list[list[int]]
) -> list[int | Exception]:
    """Next token for every row of `logits` [rows, vocab]; a row whose sampler fails gets the
    exception instead, so one request's failure is never the batch's."""
    greedy = logits.argmax(dim=-1).tolist()
    picked: list[int | Exception] = []
    for i, sampler in enumerate(samplers):
        if sampler.sampling.is_plain_greedy:
            picked.append(greedy[i])
            continue
        try:
            picked.append(sampler.pick(logits[i], histories[i]))
        except Exception as exc:
            picked.append(exc)
    return picked
