"""A deterministic, rule-based chat "model": no download, same answer for the same conversation."""

from __future__ import annotations

import re
from collections.abc import Iterator

from .models import ChatPrompt


def reply(prompt: ChatPrompt) -> str:
    """The assistant's answer to the last user turn, given the whole conversation."""
    said = [turn.content for turn in prompt.turns if turn.role == "user"]
    text = said[-1].strip() if said else ""
    lowered = text.lower()
    if not text:
        return "Say something and I will remember it for as long as your session lives."
    if re.search(r"\b(hello|hi|hey)\b", lowered):
        name = prompt.name or "there"
        return f"Hello, {name}! This is turn {len(said)} of our conversation."
    if match := re.search(r"\bmy name is (\w+)", lowered):
        prompt.name = match.group(1).capitalize()
        return f"Nice to meet you, {prompt.name}. I will keep that in your session."
    if "what is my name" in lowered or "who am i" in lowered:
        if prompt.name:
            return f"You are {prompt.name}: you told me earlier in this session."
        return "You have not told me your name yet."
    if "what did i say" in lowered or "history" in lowered:
        earlier = said[:-1]
        if not earlier:
            return "This is the first thing you said in this session."
        listed = "; ".join(f'"{item}"' for item in earlier[-5:])
        return f"Earlier you said: {listed}."
    if "how many" in lowered:
        return f"You have sent {len(said)} messages in this session."
    return f'You said "{text}". Ask me "what did I say" and I will recall it from your session.'


def stream_words(text: str) -> Iterator[str]:
    """Split a reply into word-sized chunks, as a model would stream tokens."""
    yield from re.findall(r"\S+\s*", text)
