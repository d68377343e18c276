"""Regenerate data/samples/marked_letter.jsonl (deterministic): the GRPO demo's task (conf/demo/grpo.yaml), a
multiple-choice "question" whose answer is the letter the prompt marks, the prompt's last token (the demo's template
adds nothing after the instruction), so the tiny random model learns from the reward alone to repeat it: the letter
is in the last position's residual stream, no attention to learn. Records carry `instruction` and `answer` (read by
data.rl_prompts.AnswerPrompts).

    python -m data.samples.generate_marked
"""
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
LETTERS = "ABCD"
COUNT = 256


def records(rng: random.Random) -> list[dict]:
    return [{"id": f"marked-{i}", "instruction": f"Choose A, B, C or D: the marked one.\nMarked: {letter}",
             "answer": letter}
            for i, letter in enumerate(rng.choice(LETTERS) for _ in range(COUNT))]


def main() -> None:
    with open(HERE / "marked_letter.jsonl", "w", encoding="utf-8") as f:
        for row in records(random.Random(1234)):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
