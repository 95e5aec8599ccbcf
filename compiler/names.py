"""Names the language knows before any model is loaded: metrics, defaults, the library root.

The runtime's metric lens implements exactly ``METRICS`` (a test holds the two together).
"""

from __future__ import annotations

from pathlib import Path

# metric name -> one-line description (what the runtime's metric lens computes for a reply)
METRICS: dict[str, str] = {
    "length": "reply length in tokens of the model's tokenizer",
    "words": "reply length in words",
    "chars": "reply length in characters",
    "sentences": "number of sentences",
    "list_items": "bulleted or numbered list items (lines starting with -, *, + or 1.)",
    "markdown_headers": "markdown headers (lines starting with #)",
    "bold": "bold spans (**text** or __text__)",
    "markdown": "markdown structure: headers + bold spans + list items + code blocks + table rows",
    "code_blocks": "fenced code blocks",
    "emoji": "emoji characters",
    "exclamations": "exclamation marks",
    "questions": "question marks",
    "links": "URLs and markdown links",
    "first_person": "first-person singular pronouns (I, me, my, mine, myself) per 100 words",
    "apology": "apology phrases (sorry, apologize, ...) per 100 words",
    "hedging": "hedging phrases (might, perhaps, I think, ...) per 100 words",
}

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_SAE = "default"

# The concept library and example policies: specs/ in a source checkout, ethos/specs when installed.
LIBRARY_ROOT = Path(__file__).resolve().parent.parent / "specs"
