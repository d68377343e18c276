"""Talk to a trained model: the prompt is wrapped in the training template and the answer streams to the terminal.

    python generate.py --model experiments/demo_sft/checkpoint-152 --prompt "介绍一下长城"
    python generate.py --model experiments/demo_lora/checkpoint-152            # interactive: one prompt per line
    python generate.py --model <dir> --template en --temperature 0 --max-new-tokens 64

    python generate.py --model <dir> --template chat                          # a chat with history
    python generate.py --model <dir> --template chat --system "Be brief." --prompt "你好"

`--model` is a full Hugging Face folder (a checkpoint, or its merged/ folder) or a LoRA adapter folder
(its adapter_config.json names the base model). Interactive mode reads prompts from stdin until EOF or "exit".

The prompt is tokenized as training tokenizes it (data/tokenization.py): a text template's prompt is the
tokenizer's encoding of the templated text, with BOS when the tokenizer adds one (the panda template: the
prompt without its " " separator, the original's N positions); `--template chat` renders the conversation
with the checkpoint's own chat template (its generation prompt appended) and encodes that text, as
`template: chat` training does, and stops at the template's end-of-turn token. In chat mode the interactive
session keeps the history (each answer is appended as the assistant's turn); "reset" starts a new one.
"""
import argparse
import sys

import torch
from transformers import TextStreamer

from data.chat import check_chat_template
from data.templates import TEMPLATE_NAMES, ChatTemplate, get_template
from data.tokenization import bos_head
from models.loading import load_for_inference
from general_util.errors import UserError, one_line
from models.weights_io import DTYPES


def prompt_ids(tokenizer, prompt: str, template: str, history: list[dict] | None = None,
               system: str | None = None) -> torch.Tensor:
    """The prompt's token ids, as training tokenizes the text before a response (see the module doc)."""
    chosen = get_template(template)
    if isinstance(chosen, ChatTemplate):
        check_chat_template(tokenizer)
        messages = ([{"role": "system", "content": system}] if system else []) + list(history or []) + \
            [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    text = chosen.format(prompt)
    if chosen.label_boundary == "prompt_length":
        text = text.removesuffix(" ")
    return torch.tensor([bos_head(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]])


def end_of_turn_ids(tokenizer, template: str) -> list[int]:
    """EOS, and with the chat template the special token that closes an assistant turn (Llama-3's <|eot_id|>)."""
    stops = [tokenizer.eos_token_id]
    if isinstance(get_template(template), ChatTemplate):
        turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        rendered = tokenizer.apply_chat_template(turn, tokenize=False)
        closing = tokenizer(rendered[rendered.rindex("y") + 1:], add_special_tokens=False)["input_ids"]
        special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
        stops += [token for token in closing[:1] if token in special and token not in stops]
    return stops


def generate(model, tokenizer, prompt: str, args: argparse.Namespace, history: list[dict] | None = None) -> str:
    """Stream the answer to stdout and return it; the seed is reset per prompt, so answers are reproducible."""
    torch.manual_seed(args.seed)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 \
        else {"do_sample": False, "temperature": None, "top_p": None}
    input_ids = prompt_ids(tokenizer, prompt, args.template, history, args.system)
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=args.max_new_tokens, use_cache=True,
                                eos_token_id=end_of_turn_ids(tokenizer, args.template),
                                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else tokenizer.eos_token_id,
                                streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
                                **sampling)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


def interactive(model, tokenizer, args: argparse.Namespace) -> None:
    chat = isinstance(get_template(args.template), ChatTemplate)
    print('type a prompt and press enter; "exit" or end of input (Ctrl-D) quits'
          + ('; "reset" forgets the conversation' if chat else ""), file=sys.stderr)
    history: list[dict] = []
    for line in sys.stdin:
        prompt = line.strip()
        if prompt == "exit":
            break
        if chat and prompt == "reset":
            history = []
        elif prompt:
            answer = generate(model, tokenizer, prompt, args, history if chat else None)
            if chat:
                history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model, merged or adapter folder")
    parser.add_argument("--prompt", help="answer this one prompt; without it, read prompts from stdin")
    parser.add_argument("--template", default="zh", choices=TEMPLATE_NAMES,
                        help="prompt template used in training; chat: the checkpoint's own chat template, with history")
    parser.add_argument("--system", help="--template chat: a system message opening the conversation")
    parser.add_argument("--temperature", type=float, default=0.7, help="0: greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (temperature > 0)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42, help="sampling seed, reset before every prompt")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    model, tokenizer = load_for_inference(args.model, args.dtype)
    if args.template == "chat":
        check_chat_template(tokenizer)  # the checkpoint has no chat template: one line, exit 2
    if args.prompt is not None:
        generate(model, tokenizer, args.prompt, args)
    else:
        interactive(model, tokenizer, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(one_line(error), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
