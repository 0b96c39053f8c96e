"""Per-request sampling: resolving parameters against server defaults and picking tokens.

The logits processors are transformers' own (repetition penalty, temperature, top-k, top-p),
after OpenAI's adjustments (logit bias, presence/frequency penalties on the output so far) and
holding back the end-of-sequence token (`min_new_tokens`, `ignore_eos`); greedy rows without
any of these, the common case, are decided for the whole batch in one argmax.
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
    min_new_tokens: int = 0
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # alternatives per token's log-probability; None: not asked

    @property
    def adjusts_logits(self) -> bool:
        """Whether OpenAI's adjustments or the EOS hold change this request's logits."""
        return bool(
            self.logit_bias
            or self.presence_penalty
            or self.frequency_penalty
            or self.min_new_tokens
            or self.ignore_eos
        )

    @property
    def is_plain_greedy(self) -> bool:
        return not self.do_sample and self.repetition_penalty == 1.0 and not self.adjusts_logits


def resolve(params: SamplingParams, defaults: Defaults) -> ResolvedSampling:
    """Fill request parameters from the server defaults; refuse values beyond its limits."""
    max_new = params.max_new_tokens or defaults.max_new_tokens
    if max_new > defaults.max_new_tokens_limit:
        raise ParameterError(
            "params.max_new_tokens",
            f"{max_new} is above this server's limit of {defaults.max_new_tokens_limit}",
        )
    if params.min_new_tokens > max_new:
        raise ParameterError(
            "params.min_new_tokens",
            f"{params.min_new_tokens} is more than the {max_new} tokens this request may generate",
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
        min_new_tokens=params.min_new_tokens,
        ignore_eos=params.ignore_eos,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        logit_bias=tuple((int(k), v) for k, v in (params.logit_bias or {}).items()),
        logprobs=params.logprobs,
    )


@dataclass(frozen=True)
class TokenScore:
    """A sampled token's log-probability under the model, and the `top` most likely tokens."""

    logprob: float
    top: tuple[tuple[int, float], ...]


class Sampler:
    """Chooses the next token of one sequence from its logits row. `eos_ids` are held back as
    `min_new_tokens`/`ignore_eos` ask; `prompt_tokens` tells the output (which the presence
    and frequency penalties count) from the prompt in the history."""

    def __init__(
        self,
        sampling: ResolvedSampling,
        device: torch.device,
        *,
        eos_ids: frozenset[int] = frozenset(),
        prompt_tokens: int = 0,
    ) -> None:
        self.sampling = sampling
        self._eos_ids = sorted(eos_ids)
        self._prompt_tokens = prompt_tokens
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
        if self.sampling.adjusts_logits:
            scores = self._adjust(scores, history[self._prompt_tokens :])
        if self._processors:
            ids = torch.tensor([history], dtype=torch.long, device=logits.device)
            scores = self._processors(ids, scores)  # type: ignore[arg-type]
        if not self.sampling.do_sample:
            return int(scores.argmax(dim=-1).item())
        probs = torch.softmax(scores, dim=-1)
        if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0.0:
            return limit_pick(scores, logits)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())

    def score(self, logits: torch.Tensor, token: int) -> TokenScore | None:
        """`token`'s log-probability in the model's own distribution (before temperature and
        the other adjustments, as vLLM reports them), when the request asked for them."""
        wanted = self.sampling.logprobs
        if wanted is None:
            return None
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if not wanted:
            return TokenScore(float(logprobs[token]), ())
        top = logprobs.topk(wanted)
        pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
        return TokenScore(float(logprobs[token]), tuple(pairs))

    def _adjust(self, scores: torch.Tensor, output: list[int]) -> torch.Tensor:
        """OpenAI's logit bias and penalties, then the EOS hold (as vLLM orders them)."""
        sampling, vocab = self.sampling, scores.shape[-1]
        scores = scores.clone()
        for token, bias in sampling.logit_bias:
            if token < vocab:  # an id past this vocabulary has no logit to move
                scores[0, token] += bias
        if output and (sampling.presence_penalty or sampling.frequency_penalty):
            ids = torch.tensor(output, dtype=torch.long, device=scores.device)
            counts = torch.bincount(ids, minlength=vocab)[:vocab].to(scores.dtype)
            scores[0] -= sampling.frequency_penalty * counts
            scores[0] -= sampling.presence_penalty * (counts > 0).to(scores.dtype)
        if self._eos_ids and (sampling.ignore_eos or len(output) < sampling.min_new_tokens):
            scores[0, self._eos_ids] = float("-inf")
        return scores


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
