"""Turning the three input forms (prompt, messages, question + context) into token ids."""

from __future__ import annotations

from typing import Any

from llmstream.wire import ChatMessage, GenerateInput

QA_SYSTEM = "Answer the question using only the given context. Be concise."


def qa_messages(question: str, context: str | None) -> list[ChatMessage]:
    """The chat rendering of a question (with optional context)."""
    user = question if context is None else f"Context:\n{context}\n\nQuestion: {question}"
    return [ChatMessage(role="system", content=QA_SYSTEM), ChatMessage(role="user", content=user)]


class PromptBuilder:
    """Renders inputs with the model's tokenizer and chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def chat_ids(self, messages: list[ChatMessage]) -> list[int]:
        """Token ids of a chat ending with the assistant's turn."""
        plain = [{"role": m.role, "content": m.content} for m in messages]
        if not self.has_chat_template:
            # A base model: a simple transcript still lets it continue sensibly.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in plain) + "assistant:"
            return self.text_ids(text)
        rendered = self._tokenizer.apply_chat_template(
            plain, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(rendered["input_ids"])

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a raw prompt."""
        return list(self._tokenizer(text)["input_ids"])

    def input_ids(self, request: GenerateInput) -> list[int]:
        """Token ids for whichever input form `request` uses."""
        if request.messages is not None:
            return self.chat_ids(request.messages)
        if request.question is not None:
            return self.chat_ids(qa_messages(request.question, request.context))
        return self.text_ids(request.prompt or "")

    def prompt_text(self, request: GenerateInput) -> str:
        """The prompt as text (for `return_full_text`)."""
        if request.prompt is not None:
            return request.prompt
        return str(self._tokenizer.decode(self.input_ids(request), skip_special_tokens=False))
