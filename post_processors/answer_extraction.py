"""The option a generated answer chooses: the first valid option letter, after the trigger when one is set."""
import re
import unicodedata

from data.benchmarks.items import LETTERS


def extract_choice(generated: str, num_options: int, trigger: str | None = None) -> int | None:
    """Index of the first standalone letter among the item's options (A–D for four) in `generated` — the
    model's continuation only, never the prompt. With a `trigger` ("The answer is", "本题的答案是") only
    the text after its first occurrence counts, and a continuation without it is unparsable (None).
    Full-width letters and punctuation are folded to ASCII first (NFKC)."""
    text = unicodedata.normalize("NFKC", generated)
    if trigger:
        trigger = unicodedata.normalize("NFKC", trigger)
        at = text.find(trigger)
        if at < 0:
            return None
        text = text[at + len(trigger):]
    match = re.search(rf"(?<![A-Za-z])[{LETTERS[:num_options]}](?![A-Za-z])", text)
    return LETTERS.index(match.group(0)) if match else None
