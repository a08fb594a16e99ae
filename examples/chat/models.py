"""The conversation kept in each browser's session."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class ChatPrompt(BaseModel):
    """One browser's conversation: every turn so far, and what the bot learned."""

    turns: list[Turn] = Field(default_factory=list)
    name: str | None = None

    def add(self, role: Literal["user", "assistant"], content: str = "") -> Turn:
        turn = Turn(role=role, content=content)
        self.turns.append(turn)
        return turn
