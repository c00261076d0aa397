"""A multi-turn ChatML conversation with a chat (SFT) model: the history, each reply, and what to drop when it
no longer fits the context.

:class:`Conversation` keeps the messages (an optional system message, then user and assistant turns) and answers
each user turn with :func:`lmcore.finetune.sft.chat_generate`, the evaluation's own path: the history rendered by
:func:`lmcore.finetune.chat.prompt_ids`, run once through the model (prefill), then one token per step with the
model's KV cache (:func:`lmcore.model.generate.generate`), stopped at ``<|im_end|>``. When the prompt would leave
too little room for the reply, the oldest exchanges are dropped (never the system message), and
:attr:`Conversation.dropped` counts them. This module knows nothing of terminals, files or the artifact store.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmcore.data.tokenizer import Tokenizer
from lmcore.finetune.chat import prompt_ids
from lmcore.finetune.sft import chat_generate
from lmcore.model.generate import GenerationConfig
from lmcore.model.gpt import GPT


@dataclass(kw_only=True, frozen=True)
class ChatConfig:
    """What a conversation holds besides the decoding (:class:`~lmcore.model.generate.GenerationConfig`)."""

    system: str | None = None
    """The system message that opens the conversation, kept when old turns are dropped; None: no system message."""
    max_new_tokens: int = 100
    """The most tokens of one reply (it ends earlier at ``<|im_end|>``). The history is cut so that this many,
    or half the context when that is less, fit after the prompt."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"ChatConfig.max_new_tokens must be >= 1, got {self.max_new_tokens} (e.g. 100)")
        if self.system is not None and not isinstance(self.system, str):
            raise ValueError(f"ChatConfig.system must be a string or None, got {type(self.system).__name__}")


class Conversation:
    """The messages so far and the model that answers them; :meth:`reply` adds one exchange."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        config: ChatConfig | None = None,
        decoding: GenerationConfig | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.config = config if config is not None else ChatConfig()
        self.decoding = decoding if decoding is not None else GenerationConfig()
        self.messages: list[dict[str, str]] = []
        """The history: the system message (if any), then alternating user and assistant messages."""
        if self.config.system is not None:
            self.messages.append({"role": "system", "content": self.config.system})
        self.dropped = 0
        """Exchanges (a user message and its reply) dropped so far to fit the context."""
        context = model.config.context_length
        self.room = min(self.config.max_new_tokens, context // 2)
        """Tokens kept free after the prompt for the reply."""
        self.budget = context - self.room
        """The longest prompt (history, the new user message and ``<|im_start|>assistant\\n``), in tokens."""
        if self.messages and (n := len(self.prompt())) > self.budget:
            raise ValueError(
                f"the system message is {n} tokens with its reply header; this model's context of {context} tokens "
                f"keeps {self.room} free for the reply, so it may take at most {self.budget}; give a shorter one"
            )

    def prompt(self, messages: list[dict[str, str]] | None = None) -> list[int]:
        """Token ids the model continues: ``messages`` (default: the history) and ``<|im_start|>assistant\\n``."""
        return prompt_ids(self.messages if messages is None else messages, self.tokenizer)

    def fit(self, user_text: str) -> tuple[list[dict[str, str]], int]:
        """The history with ``user_text`` appended, its oldest exchanges dropped until the prompt fits
        :attr:`budget`, and how many were dropped; ValueError when even the message alone does not fit."""
        head = self.messages[:1] if self.messages and self.messages[0]["role"] == "system" else []
        turns = self.messages[len(head) :]
        turn = {"role": "user", "content": user_text}
        dropped = 0
        while len(self.prompt([*head, *turns, turn])) > self.budget:
            if not turns:
                n = len(self.prompt([*head, turn]))
                raise ValueError(
                    f"this message makes a prompt of {n} tokens; the model's context of "
                    f"{self.model.config.context_length} tokens keeps {self.room} free for the reply, so a prompt "
                    f"may take at most {self.budget}; write a shorter message"
                )
            nxt = next((i for i in range(1, len(turns)) if turns[i]["role"] == "user"), len(turns))
            del turns[:nxt]  # the oldest user message and the reply to it
            dropped += 1
        return [*head, *turns, turn], dropped

    def reply(self, user_text: str) -> str:
        """The assistant's answer to ``user_text`` after the history; both join the history.

        Raises ValueError (the history unchanged) when the message alone leaves no room for a reply.
        """
        messages, dropped = self.fit(user_text)
        text = chat_generate(
            self.model, self.tokenizer, messages, self.decoding, max_new_tokens=self.config.max_new_tokens
        )
        self.messages = [*messages, {"role": "assistant", "content": text}]
        self.dropped += dropped
        return text
