"""What a response says: the text of a row (reasoning apart from the answer, handed out
incrementally for streaming with `selar.text.Detokenizer`), the OpenAI finish reason of a row,
and the bodies and server-sent events of both completion endpoints.

A row that ended in an error or was cancelled has no OpenAI finish reason: a stream reports it
as an `error` event (which the `openai` client raises), never as finish_reason "stop"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from ..decode import RowOutput
from ..scope import scope_at_start
from ..text import Detokenizer
from .protocol import error_body

# selar's finish reasons as OpenAI's; "error" and "cancelled" are not finishes (see module doc)
FINISH = {"stop": "stop", "stop_string": "stop", "method": "stop", "length": "length"}


def finish_reason(row: RowOutput) -> Optional[str]:
    """The OpenAI finish reason of a row that ended normally; None for "error" and "cancelled"."""
    return FINISH.get(row.finish_reason)


class Text:
    """Incremental text of a row, the reasoning (before </think>) apart from the answer; the answer
    is cut at the row's stop strings and holds back a tail that may begin one. A prompt that
    closes its think block (thinking off) starts the row in its answer."""

    def __init__(self, model, stops=(), prompt_ids=()):
        self.think = {model.think_start, model.think_end} - {None}
        self.think_end = model.think_end
        self.in_reasoning = model.is_thinking and scope_at_start(prompt_ids, model.think_start, model.think_end)
        self.reasoning = Detokenizer(model.tokenizer)
        self.answer = Detokenizer(model.tokenizer, stops)

    def add(self, ids: list[int], final: bool = False) -> dict[str, str]:
        """The new text of each part ("reasoning", "answer") that has some."""
        parts: dict[str, list[int]] = {"reasoning": [], "answer": []}
        for t in ids:
            if t == self.think_end:
                self.in_reasoning = False
            if t not in self.think:
                parts["reasoning" if self.in_reasoning else "answer"].append(t)
        out = {}
        for name, det in (("reasoning", self.reasoning), ("answer", self.answer)):
            delta = det.add(parts[name], final=final)
            if delta:
                out[name] = delta
        return out

    def final(self) -> tuple[str, str]:
        """(reasoning, answer) of everything added."""
        return self.reasoning.text().strip(), self.answer.text()


@dataclass
class Reply:
    """The fixed parts of one response."""

    kind: str  # "chat" or "completion"
    id: str
    created: int
    model_name: str
    method: str
    prompt_tokens: int
    thinking: bool

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    def usage(self, completion_tokens: int, soft: int) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
            "soft_steps": soft,
        }

    def body(self, row: RowOutput, text: Text) -> dict:
        """The non-streaming response of a row that ended normally."""
        reasoning, answer = text.final()
        finish = finish_reason(row)
        if self.kind == "chat":
            msg = {"role": "assistant", "content": answer}
            if self.thinking:  # both names: reasoning_content (DeepSeek, vLLM <0.10) and reasoning (vLLM now)
                msg["reasoning_content"] = msg["reasoning"] = reasoning
            choice = {"index": 0, "message": msg, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": answer, "finish_reason": finish, "logprobs": None}
            if self.thinking:
                choice["reasoning_content"] = choice["reasoning"] = reasoning
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model_name,
            "choices": [choice],
            "usage": self.usage(len(row.token_ids), sum(row.soft)),
            "selar": {"method": self.method, "finish_reason": row.finish_reason},
        }

    # -- server-sent events ------------------------------------------------------------------------
    def _event(self, payload: dict) -> str:
        return (
            "data: "
            + json.dumps(
                {
                    "id": self.id,
                    "object": self.chunk_object,
                    "created": self.created,
                    "model": self.model_name,
                    **payload,
                }
            )
            + "\n\n"
        )

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def chunk(self, delta: Optional[dict] = None, finish: Optional[str] = None) -> str:
        delta = delta or {}
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None}
            if "reasoning_content" in delta:
                choice["reasoning_content"] = choice["reasoning"] = delta["reasoning_content"]
        return self._event({"choices": [choice]})

    def first(self) -> Optional[str]:
        """The opening event (chat: the assistant's role), or None."""
        return self.chunk({"role": "assistant", "content": ""}) if self.kind == "chat" else None

    def deltas(self, parts: dict[str, str]) -> list[str]:
        out = []
        if parts.get("reasoning"):
            out.append(self.chunk({"reasoning_content": parts["reasoning"], "reasoning": parts["reasoning"]}))
        if parts.get("answer"):
            out.append(self.chunk({"content": parts["answer"]}))
        return out

    def end(self, row: RowOutput, soft: int, include_usage: bool) -> list[str]:
        """The closing events of a row that ended normally."""
        out = [self.chunk(finish=finish_reason(row))]
        if include_usage:
            out.append(self._event({"choices": [], "usage": self.usage(len(row.token_ids), soft)}))
        out.append("data: [DONE]\n\n")
        return out


def error_event(status: int, message: str, type_: str = "server_error") -> str:
    """An SSE error event; the `openai` client raises it as an APIError."""
    return "event: error\ndata: " + json.dumps(error_body(status, message, None, type_)) + "\n\n"
