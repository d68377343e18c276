"""Model families beyond the bundled tiny LLaMA (models/tiny.py FAMILIES: LLaMA-2, Llama-3, Qwen2.5, Qwen3,
Mistral, Qwen3-MoE), each a tiny random model of its published config with its real tokenizer, in process on one
rank: the architecture each family needs survives the scaling; packed SFT's Hugging Face export (and a LoRA
`all-linear` adapter's) reloads with from_pretrained and gives the engine's logits; a vocabulary extension keeps
tied embeddings tied; multiple-choice log-likelihoods equal lm-eval's HFLM within 1e-4; Mistral's sliding window
holds inside packed rows; Qwen3-MoE's router load-balancing loss is transformers' own, added with its
coefficient and logged; MFU counts active parameters. 2 ranks, both engines, resume: test_model_families_ranks.py."""
import importlib.util
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from data.collators import PackedCollator, fit_to_model, model_inputs
from general_util.errors import ConfigError
from models.tiny import FAMILIES
from modules.flops import active_parameter_count, training_flops_per_token
from modules.loss import batch_targets
from modules.loss_impl import LossSettings, causal_lm_loss_terms
from tests.families import family_overrides, tiny_family
from tests.trainer_runs import FAST, compose_config

NAMES = sorted(FAMILIES)
TIED = ("qwen2.5", "qwen3")
STEPS = 2
# a vocabulary extension (tied families) past the 267 spare rows of Qwen's padded 151,936-row embedding
NEW_TOKENS = [f"<|新词{i}|>" for i in range(300)]


def listed_added_tokens(folder) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) of the added tokens a saved folder's tokenizer_config.json lists."""
    listed = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    return {int(index): (token["content"], token["special"]) for index, token in listed.items()}


def added_tokens(decoder: dict) -> dict[int, tuple[str, bool]]:
    """The same of a tokenizer's `added_tokens_decoder` (id -> AddedToken)."""
    return {index: (token.content, token.special) for index, token in decoder.items()}


def test_each_tiny_model_keeps_what_its_family_needs():
    """The switches each family's training depends on, read from the built models (a few MB each)."""
    tokenizers = {}  # each family's tokenizer loaded once (Llama-3's and Qwen's tokenizer.json: ~1 s of CPU each)
    for name in NAMES:
        path = tiny_family(name)
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        tokenizers[name] = tokenizer
        # tokenizer_config.json lists the added tokens (models.vocab.save_tokenizer), as tokenizer.json has them
        assert listed_added_tokens(path) == added_tokens(tokenizer.backend_tokenizer.get_added_tokens_decoder()), name
        published = json.loads(FAMILIES[name].config.read_text())
        config = model.config
        assert config.model_type == published["model_type"] and config.vocab_size == published["vocab_size"] >= len(tokenizer)
        assert config.tie_word_embeddings == published["tie_word_embeddings"]
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == published["tie_word_embeddings"], name
        assert sum(f.stat().st_size for f in path.glob("*.safetensors")) < 20e6, name
        attention = model.model.layers[0].self_attn
        assert (attention.q_proj.bias is not None) == (published["model_type"] == "qwen2"), name  # Qwen2's QKV biases
        assert hasattr(attention, "q_norm") == published["model_type"].startswith("qwen3"), name  # Qwen3's q/k norms
    assert len(tokenizers["llama2"]) == 32000
    llama3 = tokenizers["llama3"]
    assert len(llama3) == 128256 and llama3("Hello world").input_ids == [128000, 9906, 1917]
    assert llama3.convert_tokens_to_ids("<|eot_id|>") == 128009
    qwen = tokenizers["qwen2.5"]
    assert qwen("Hello world").input_ids == [9707, 1879] and qwen.pad_token == "<|endoftext|>"
    assert AutoConfig.from_pretrained(tiny_family("mistral")).sliding_window == 16
    moe = AutoConfig.from_pretrained(tiny_family("qwen3_moe"))
    assert (moe.num_experts, moe.num_experts_per_tok, moe.router_aux_loss_coef) == (4, 2, 0.001)


def train_family(out, name: str, lora: bool):
    """A 2-step packed SFT run of `name` (one rank, DeepSpeed ZeRO-1) in this process: its trainer (the engine's
    model) and its output folder; the tied families also extend the vocabulary (NEW_TOKENS)."""
    from general_util.dist import init_distributed
    from trainer import build_trainer
    extra = []
    if name in TIED and not lora:
        (out / "tokens.txt").write_text("\n".join(NEW_TOKENS) + "\n", encoding="utf-8")
        extra = [f"tokenizer.extra_tokens_file={out / 'tokens.txt'}"]
    if lora:
        extra = ["model.use_peft=true", "model.lora_config.dropout=0"]
    cfg = compose_config(FAST + family_overrides(name) + [f"max_steps={STEPS}", "per_gpu_train_batch_size=2"] + extra,
                         output_dir=out / "run")
    trainer = build_trainer(cfg, init_distributed())
    trainer.run()
    trainer.engine.eval()
    return trainer, out / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_family(name, lora), run once per module and kept (the tests of a family share its run)."""
    runs = {}

    def get(name: str, lora: bool = False):
        if (name, lora) not in runs:
            runs[name, lora] = train_family(tmp_path_factory.mktemp(f"{name}-{'lora' if lora else 'sft'}"), name, lora)
        return runs[name, lora]
    return get


@pytest.fixture(scope="module")
def exported(trained):
    """The export of `trained(name)` (its last checkpoint) reloaded with from_pretrained, model in eval mode and
    tokenizer, once per module: the reload tests and the lm-eval test read it, none changes it."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            export = trained(name)[1] / f"checkpoint-{STEPS}"
            model, tokenizer = AutoModelForCausalLM.from_pretrained(export).eval(), AutoTokenizer.from_pretrained(export)
            loaded[name] = export, model, tokenizer
        return loaded[name]
    return get


def engine_logits(trainer, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return trainer.engine.model(input_ids=input_ids).logits


@pytest.mark.parametrize("name", NAMES)
def test_export_reloads_with_the_engines_logits(name, trained, exported):
    trainer, _ = trained(name)
    export, model, tokenizer = exported(name)
    assert len(tokenizer) == len(trainer.tokenizer) and model.config.vocab_size >= len(tokenizer)
    # the export lists its added tokens (the tied families' 300 new ones too) as the publishers' folders do
    # (models.vocab.save_tokenizer), and the reload encodes as the trained tokenizer did
    assert listed_added_tokens(export) == added_tokens(trainer.tokenizer.added_tokens_decoder)
    text = "天空是蓝色的。The sky is blue." + "".join(NEW_TOKENS[:3] if name in TIED else ())
    assert tokenizer(text).input_ids == trainer.tokenizer(text).input_ids
    assert tokenizer.special_tokens_map == trainer.tokenizer.special_tokens_map
    input_ids = torch.tensor([tokenizer("天空是蓝色的。The sky is blue.").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, engine_logits(trainer, input_ids),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TIED)
def test_vocabulary_growth_keeps_tied_embeddings_tied(name, trained, exported):
    """300 new tokens grow the shared matrix to 151,969 rows: still the output head, in training and in the
    export (saved once, reloaded tied)."""
    trainer, out = trained(name)
    module = trainer.engine.module
    grown = 151669 + len(NEW_TOKENS)
    assert len(trainer.tokenizer) == grown == module.model.embed_tokens.weight.shape[0]
    assert module.lm_head.weight is module.model.embed_tokens.weight
    export, model, tokenizer = exported(name)
    with safe_open(str(export / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and f.get_slice("model.embed_tokens.weight").get_shape()[0] == grown
    assert model.config.tie_word_embeddings and model.config.vocab_size == grown
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.convert_tokens_to_ids(NEW_TOKENS) == list(range(151669, grown))


@pytest.mark.parametrize("name", NAMES)
def test_lora_all_linear_adapter_reloads_with_the_engines_logits(name, trained):
    """`target_modules: all-linear`: every linear layer but the head carries an adapter (the MoE experts are
    fused 3-D weights, not nn.Linear), and the saved adapter reloaded on its base gives the engine's logits."""
    from peft import PeftModel
    trainer, out = trained(name, lora=True)
    peft_config = trainer.engine.module.peft_config["default"]
    expected = {"q_proj", "k_proj", "v_proj", "o_proj"} | ({"gate_proj", "up_proj", "down_proj"} if name != "qwen3_moe" else set())
    assert set(peft_config.target_modules) == expected
    adapter = out / f"checkpoint-{STEPS}"
    base = AutoModelForCausalLM.from_pretrained(tiny_family(name))
    model = PeftModel.from_pretrained(base, adapter).eval()
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, engine_logits(trainer, input_ids),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval not installed (requirements-lm-eval.txt)")
@pytest.mark.parametrize("name", NAMES)
def test_multiple_choice_log_likelihoods_equal_lm_eval(name, exported, tmp_path):
    """The harness evaluator on the exported model against lm-eval's own HFLM run (LogiQA 2.0 items)."""
    from post_processors.lm_eval_harness import LMEvalHarnessEvaluator
    from tests.test_lm_eval_evaluator import FIXTURES, assert_same_as_lm_eval, reference
    export, model, tokenizer = exported(name)
    evaluator = LMEvalHarnessEvaluator("harness", [str(FIXTURES / "logiqa2_local.yaml")], batch_size=3,
                                       max_length=96, limit=2)
    metrics = evaluator(model, tokenizer, tmp_path, LossSettings())
    assert_same_as_lm_eval(metrics, tmp_path, reference(export, ["logiqa2_local"], FIXTURES, max_length=96, limit=2))


def test_mistral_sliding_window_holds_inside_packed_rows():
    """A packed row of two samples longer than the window (16) scores each sample exactly as the model does
    alone (transformers' own sliding-window mask); a mask without the window would let tokens see too far."""
    path = tiny_family("mistral")
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.unk_token
    samples = [list(range(100, 140)), list(range(300, 333))]
    rows = [{"input_ids": samples[0] + samples[1], "labels": samples[0] + samples[1], "seq_lens": [40, 33], "index": 0}]
    alone = []
    with torch.no_grad():
        for sample in samples:
            alone.append(model(input_ids=torch.tensor([sample])).logits[0])
        for implementation in ("sdpa", "eager"):
            model.config._attn_implementation = implementation
            collator = PackedCollator(tokenizer, implementation)
            fit_to_model(collator, model.config)
            assert collator.sliding_window == 16
            packed = model(**model_inputs(collator(rows), torch.device("cpu"))).logits[0]
            torch.testing.assert_close(packed[:40], alone[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(packed[40:73], alone[1], rtol=1e-5, atol=1e-5)
            unwindowed = model(**model_inputs(PackedCollator(tokenizer, implementation)(rows), torch.device("cpu"))).logits[0]
            assert not torch.allclose(unwindowed[20:40], alone[0][20:40], atol=1e-4)


def test_packing_refuses_models_whose_layers_mix_windows():
    config = AutoConfig.from_pretrained(tiny_family("qwen2.5"))
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 8, 1
    config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(ConfigError, match="packing with attn_implementation=sdpa: some layers use a sliding window"):
        fit_to_model(PackedCollator(AutoTokenizer.from_pretrained(tiny_family("qwen2.5")), "sdpa"), config)


def test_moe_router_loss_is_transformers_own_and_its_coefficient_applies():
    """causal_lm_loss_terms gives transformers' `aux_loss`; the token-mean loss plus router_aux_loss_coef × it is
    transformers' own `loss` with labels (where it adds the two itself)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_family("qwen3_moe")).eval()
    input_ids = torch.tensor([[11, 12, 13, 14, 15, 16, 17, 18], [21, 22, 23, 24, 25, 26, 27, 28]])
    labels = input_ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        theirs = model(input_ids=input_ids, labels=labels, output_router_logits=True)
        targets = batch_targets({"labels": labels})
        for impl in ("full", "chunked"):
            loss_sum, aux = causal_lm_loss_terms(model, {"input_ids": input_ids}, targets, LossSettings(impl))
            assert aux.item() == pytest.approx(theirs.aux_loss.item(), rel=1e-6)
            mean = loss_sum / (targets != -100).sum()
            assert (mean + model.config.router_aux_loss_coef * aux).item() == pytest.approx(theirs.loss.item(), rel=1e-6)
        dense = AutoModelForCausalLM.from_pretrained(tiny_family("qwen3")).eval()
        assert causal_lm_loss_terms(dense, {"input_ids": input_ids}, targets, LossSettings("full"))[1] is None


def moe_run(tmp_path, coefficient, logged):
    from general_util.dist import init_distributed
    from trainer import TrainerHooks, build_trainer
    overrides = [f"model_name_or_path={tiny_family('qwen3_moe')}", "max_steps=3", "learning_rate=1e-2",
                 "warmup_proportion=0", "per_gpu_train_batch_size=2", "peak_flops_per_gpu=1e12",
                 f"moe_aux_loss_coef={coefficient}"]
    cfg = compose_config(FAST + overrides, output_dir=tmp_path / str(coefficient))
    trainer = build_trainer(cfg, init_distributed(), hooks=TrainerHooks(on_log=lambda step, values: logged.append(values)))
    first = model_inputs(next(trainer.micro_batches()), torch.device("cpu"))
    with torch.no_grad():
        aux = trainer.engine.module(**first, output_router_logits=True).aux_loss.item()
    trainer.run()
    return trainer, aux, first["input_ids"].shape[1]


def test_moe_training_adds_the_router_loss_logs_it_and_counts_active_parameters(tmp_path):
    """train/aux_loss of step 1 is transformers' aux_loss of the first batch; the coefficient (the model's 0.001;
    moe_aux_loss_coef=0 logs it only) weighs it into train/loss (as transformers' own MoE `loss`) and changes the
    updates; MFU counts a token's 2 of 4 experts, not all 4."""
    default, zero = [], []
    trainer, first_aux, row_length = moe_run(tmp_path, "null", default)
    moe_run(tmp_path, 0, zero)
    assert trainer.objective.router_loss_coef == 0.001
    for logged in (default, zero):
        assert len(logged) == 3 and logged[0]["train/aux_loss"] == pytest.approx(first_aux, rel=1e-6)
    # the same first step: its cross entropy, plus 0.001 × the aux loss where the coefficient is the model's
    assert default[0]["train/loss"] == pytest.approx(zero[0]["train/loss"] + 0.001 * first_aux, rel=1e-6)
    assert zero[1]["train/loss"] != default[1]["train/loss"]
    module = trainer.engine.module
    total = sum(p.numel() for p in module.parameters())
    routed = sum(p.numel() for n, p in module.named_parameters() if ".experts." in n)
    assert routed and active_parameter_count(module) == total - routed + routed // 2
    active = total - routed // 2
    expected = default[0]["train/tokens_per_second"] * training_flops_per_token(active, 2, 8, row_length) / 1e12
    assert default[0]["train/mfu"] == pytest.approx(expected, rel=1e-9)
