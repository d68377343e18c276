"""generate.py: the training prompt template, greedy and seeded sampling reproducible, adapter folders,
and the interactive mode driven through stdin."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.templates import get_template
from tests.forked_ranks import run_script

BASE = "models/tiny_llama"


def run_generate(args: list[str], stdin: str | None = None) -> str:
    result = run_script("generate.py", args, stdin=stdin, timeout=120)  # `python generate.py`, forked
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def greedy_reference(model, tokenizer, prompt: str, template: str = "zh", max_new_tokens: int = 12) -> str:
    """Greedy decoding of BOS + the templated prompt, as training tokenizes it, without generate.py."""
    text = get_template(template).format(prompt)
    input_ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        output = model.eval().generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A LoRA adapter folder whose adapter changes the outputs (B initialised randomly, not to zero)."""
    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(BASE),
                           LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out, model


def test_greedy_output_is_the_templated_greedy_decoding():
    args = ["--model", BASE, "--prompt", "介绍一下长城", "--temperature", "0", "--max-new-tokens", "12", "--template", "en"]
    expected = greedy_reference(AutoModelForCausalLM.from_pretrained(BASE), AutoTokenizer.from_pretrained(BASE),
                                "介绍一下长城", template="en")
    assert run_generate(args + ["--seed", "1"]) == expected + "\n"


def test_sampling_is_reproducible_for_a_seed():
    args = ["--model", BASE, "--prompt", "你好", "--temperature", "1.0", "--top-p", "0.95", "--max-new-tokens", "16"]
    first = run_generate(args + ["--seed", "7"])
    assert first.strip() and run_generate(args + ["--seed", "7"]) == first


def test_interactive_mode_with_an_adapter_folder(adapter_dir):
    folder, peft_model = adapter_dir
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    expected = [greedy_reference(peft_model, tokenizer, prompt) for prompt in ("你好", "Hello")]
    assert expected[0] != greedy_reference(AutoModelForCausalLM.from_pretrained(BASE), tokenizer, "你好")
    stdout = run_generate(["--model", str(folder), "--temperature", "0", "--max-new-tokens", "12"],
                          stdin="你好\n\nHello\nexit\n不会被回答\n")
    assert stdout == "".join(answer + "\n" for answer in expected)
