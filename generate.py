"""Talk to a trained model: the prompt is wrapped in the training template and the answer streams to the terminal.

    python generate.py --model experiments/demo_sft/checkpoint-152 --prompt "介绍一下长城"
    python generate.py --model experiments/demo_lora/checkpoint-152            # interactive: one prompt per line
    python generate.py --model <dir> --template en --temperature 0 --max-new-tokens 64

`--model` is a full Hugging Face folder (a checkpoint, or its merged/ folder) or a LoRA adapter folder
(its adapter_config.json names the base model). Interactive mode reads prompts from stdin until EOF or "exit".
"""
import argparse
import sys

import torch
from transformers import TextStreamer

from data.templates import TEMPLATES, get_template
from models.loading import load_for_inference
from models.weights_io import DTYPES


def prompt_ids(tokenizer, prompt: str, template: str) -> torch.Tensor:
    """BOS + the templated prompt, tokenized as in training (data/labels.py puts BOS before the prompt's ids)."""
    ids = tokenizer(get_template(template).format(prompt), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return torch.tensor([bos + ids])


def generate(model, tokenizer, prompt: str, args: argparse.Namespace) -> str:
    """Stream the answer to stdout and return it; the seed is reset per prompt, so answers are reproducible."""
    torch.manual_seed(args.seed)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.temperature > 0 \
        else {"do_sample": False, "temperature": None, "top_p": None}
    input_ids = prompt_ids(tokenizer, prompt, args.template)
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=args.max_new_tokens, use_cache=True,
                                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else tokenizer.eos_token_id,
                                streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
                                **sampling)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


def interactive(model, tokenizer, args: argparse.Namespace) -> None:
    print('type a prompt and press enter; "exit" or end of input (Ctrl-D) quits', file=sys.stderr)
    for line in sys.stdin:
        prompt = line.strip()
        if prompt == "exit":
            break
        if prompt:
            generate(model, tokenizer, prompt, args)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model, merged or adapter folder")
    parser.add_argument("--prompt", help="answer this one prompt; without it, read prompts from stdin")
    parser.add_argument("--template", default="zh", choices=sorted(TEMPLATES), help="prompt template used in training")
    parser.add_argument("--temperature", type=float, default=0.7, help="0: greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (temperature > 0)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42, help="sampling seed, reset before every prompt")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    model, tokenizer = load_for_inference(args.model, args.dtype)
    if args.prompt is not None:
        generate(model, tokenizer, args.prompt, args)
    else:
        interactive(model, tokenizer, args)


if __name__ == "__main__":
    main()
