"""The option a generated answer chooses.

Two rules for reading the letter:
- `standalone` (the default): the first standalone letter among the item's options (A–D for four, so a
  three-option item has no D), full-width letters and punctuation folded to ASCII first (NFKC);
- `anywhere` (the original PandaLLM evaluation): any of the letters A, B, C, D, even inside a word, as the
  regex `A|B|C|D` finds them; a letter past the item's options is kept (and is wrong).
`position` picks the first letter found or the last (the original's `reverse`).

With an `answer_trigger` only the text after it counts, up to its next occurrence: after its first
occurrence in the generated text, or all of the generated text when the prompt itself ends with the
trigger (a prompt whose answer cue is the trigger). A generation without the trigger is unparsable."""
import re
import unicodedata

from data.benchmarks.items import LETTERS
from general_util.errors import ConfigError

LETTER_MATCHES = ("standalone", "anywhere")
POSITIONS = ("first", "last")


def check_rule(letter_match: str, position: str) -> None:
    if letter_match not in LETTER_MATCHES:
        raise ConfigError(f"letter_match={letter_match!r}: use one of {', '.join(LETTER_MATCHES)}")
    if position not in POSITIONS:
        raise ConfigError(f"answer_position={position!r}: use one of {', '.join(POSITIONS)}")


def answer_text(generated: str, trigger: str | None, prompt: str = "") -> str | None:
    """The part of `generated` the letter is read from (None: the trigger is missing)."""
    if not trigger:
        return generated
    if not prompt.endswith(trigger):
        at = generated.find(trigger)
        if at < 0:
            return None
        generated = generated[at + len(trigger):]
    return generated.split(trigger)[0]


def extract_choice(generated: str, num_options: int, trigger: str | None = None, position: str = "first",
                   letter_match: str = "standalone", prompt: str = "") -> int | None:
    """Index of the chosen option in `generated` — the model's continuation only, never the prompt."""
    check_rule(letter_match, position)
    if letter_match == "standalone":
        generated = unicodedata.normalize("NFKC", generated)
        trigger = unicodedata.normalize("NFKC", trigger) if trigger else trigger
        prompt = unicodedata.normalize("NFKC", prompt)
    text = answer_text(generated, trigger, prompt)
    if text is None:
        return None
    pattern = rf"(?<![A-Za-z])[{LETTERS[:num_options]}](?![A-Za-z])" if letter_match == "standalone" else "A|B|C|D"
    found = re.findall(pattern, text)
    if not found:
        return None
    return LETTERS.index(found[0] if position == "first" else found[-1])
