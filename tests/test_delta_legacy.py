"""apply_delta --legacy-delta: published deltas without delta_meta.json (PandaLLM's and FastChat's rules).

The deltas are written here as the original scripts wrote them (transformers 4.28 `save_pretrained`:
`pytorch_model-0000i-of-0000n.bin` shards saved by torch.save, `pytorch_model.bin.index.json`, config and
tokenizer), not by our make_delta, from models/tiny_llama in fp16 like the published ones.

Why bit for bit is the right expectation in fp16: the target scales every base weight by a factor in
[0.75, 1.5], so T lies within [B/2, 2B] with B's sign and T − B is exact in fp16 (Sterbenz's lemma).
The delta written by the rule therefore holds T − B exactly, B + D == T is representable, and the tool
(the exact sum, rounded once to the delta's dtype) must give T's bits. With an arbitrary perturbation
T − B would itself round, and base + delta, by any tool, could miss T by an ulp.
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import apply_delta
from models.delta import META_FILE, NO_FINGERPRINT
from models.weights_io import BIN_INDEX, SAFETENSORS_INDEX, WeightsReader
from tests.forked_ranks import run_script

TINY = "models/tiny_llama"
VOCAB = ("model.embed_tokens.weight", "lm_head.weight")
INV_FREQ = [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]  # in transformers < 4.31 files


def tiny_base() -> dict[str, torch.Tensor]:
    """models/tiny_llama's weights (vocabulary 1024, hidden 64) in fp16, in `save_pretrained`'s order."""
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    return {name: tensor.detach().half() for name, tensor in model.state_dict().items()}


def fine_tuned(base: dict[str, torch.Tensor], extra_rows: int = 0) -> dict[str, torch.Tensor]:
    """Every weight scaled by a deterministic factor in [0.75, 1.5] (see the module docstring); `extra_rows`
    new vocabulary rows (an added [PAD]) at the end of embed_tokens and lm_head."""
    generator = torch.Generator().manual_seed(1)
    target = {}
    for name, weights in base.items():
        factor = 0.75 + 0.75 * torch.rand(weights.shape, generator=generator, dtype=torch.float64)
        target[name] = (weights.double() * factor).half()
        if extra_rows and name in VOCAB:
            new_rows = 0.02 * torch.randn(extra_rows, weights.shape[1], generator=generator)
            target[name] = torch.cat([target[name], new_rows.half()])
    return target


def legacy_delta(flavour: str, base: dict, target: dict) -> dict[str, torch.Tensor]:
    """The delta by the flavour's rule, in fp16 as the scripts computed it: target − base for every tensor,
    except that Panda stores embed_tokens / lm_head as the target's values. Rows the base lacks are
    target − 0 (FastChat v0 padded its base with zero rows)."""
    delta = {}
    for name, weights in target.items():
        delta[name] = weights.clone()
        if not (flavour == "panda" and name in VOCAB):
            delta[name][: base[name].shape[0]] -= base[name]
            assert torch.equal(base[name] + delta[name][: base[name].shape[0]], target[name][: base[name].shape[0]])
    return delta


def save_model(folder, state: dict, layout: str = "bin-sharded", vocab_size: int = 1024):
    """`state` with config, generation config and tokenizer ([PAD] added when the vocabulary grew): sharded
    `.bin` + index like the original scripts (`bin-old-format`: torch.save's pre-1.6, non-zip format, which
    cannot be memory-mapped) or one `model.safetensors`."""
    folder.mkdir(parents=True)
    if layout == "safetensors":
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        names, num_shards = list(state), 3
        per_shard, weight_map = -(-len(names) // num_shards), {}
        for i in range(num_shards):
            file, part = f"pytorch_model-{i + 1:05d}-of-{num_shards:05d}.bin", names[i * per_shard:(i + 1) * per_shard]
            torch.save({name: state[name] for name in part}, folder / file,
                       _use_new_zipfile_serialization=layout != "bin-old-format")
            weight_map.update(dict.fromkeys(part, file))
        total_size = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
        (folder / BIN_INDEX).write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map},
                                                   indent=2))
    config = json.loads(open(f"{TINY}/config.json").read())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": vocab_size, "dtype": "float16"}, indent=2))
    shutil.copy(f"{TINY}/generation_config.json", folder)
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    if vocab_size > len(tokenizer):
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.save_pretrained(folder)
    return folder


def read_all(folder) -> dict[str, torch.Tensor]:
    reader = WeightsReader(folder)
    return {name: reader.read(name).clone() for name in reader.specs}


def args(base, delta, target, *extra) -> list[str]:
    return ["--base-model-path", str(base), "--delta-path", str(delta), "--target-model-path", str(target), *extra]


def assert_bit_for_bit(restored: dict, target: dict) -> None:
    assert restored.keys() == target.keys()
    for name, expected in target.items():
        assert restored[name].dtype == expected.dtype and torch.equal(restored[name], expected), name


@pytest.mark.parametrize("base_layout", ["bin-sharded", "bin-old-format", "safetensors"])
def test_panda_delta_gives_the_target_bit_for_bit(tmp_path, capsys, base_layout):
    base = tiny_base()
    target = fine_tuned(base, extra_rows=1)  # 1025 vs 1024 rows, like Panda's 32001 vs LLaMA's 32000
    delta = legacy_delta("panda", base, target)
    assert torch.equal(delta["lm_head.weight"], target["lm_head.weight"])
    delta.update(dict.fromkeys(INV_FREQ, torch.zeros(8)))  # 2023 files carry these; a recent base does not
    save_model(tmp_path / "base", base, base_layout)
    save_model(tmp_path / "delta", delta, vocab_size=1025)
    restored = tmp_path / "restored"
    capsys.readouterr()
    assert apply_delta.main(args(tmp_path / "base", tmp_path / "delta", restored, "--legacy-delta", "panda",
                                 "--max-shard-size", "200KB")) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"warning: {NO_FINGERPRINT}" in err
    assert any(line.startswith("note: leaving out 2 rotary inv_freq buffer(s)") for line in err)
    assert_bit_for_bit(read_all(restored), target)

    files = {path.name for path in restored.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert SAFETENSORS_INDEX in files and not any(name.endswith(".bin") for name in files)
    assert len(set(json.loads((restored / SAFETENSORS_INDEX).read_text())["weight_map"].values())) > 1
    loaded = AutoModelForCausalLM.from_pretrained(restored, dtype="auto")
    assert_bit_for_bit(loaded.state_dict(), target)
    assert AutoTokenizer.from_pretrained(restored).convert_tokens_to_ids("[PAD]") == 1024


def test_fastchat_delta_gives_the_target_bit_for_bit(tmp_path, capsys):
    base = tiny_base()
    target = fine_tuned(base)
    delta = legacy_delta("fastchat", base, target)
    assert not torch.equal(delta["model.embed_tokens.weight"], target["model.embed_tokens.weight"])
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", delta)
    assert apply_delta.main(args(tmp_path / "base", tmp_path / "delta", tmp_path / "restored",
                                 "--legacy-delta", "fastchat")) == 0
    assert f"warning: {NO_FINGERPRINT}" in capsys.readouterr().err.splitlines()
    assert_bit_for_bit(read_all(tmp_path / "restored"), target)


def test_fastchat_extra_vocabulary_rows_need_no_verify(tmp_path, capsys):
    """FastChat v1.1+ deltas keep the base's vocabulary: more rows means a likely wrong base, unless the delta
    was made against a zero-padded base (v0's [PAD]), where the extra rows are the delta's own values."""
    base = tiny_base()
    target = fine_tuned(base, extra_rows=1)
    save_model(tmp_path / "base", base)
    save_model(tmp_path / "delta", legacy_delta("fastchat", base, target), vocab_size=1025)
    command = args(tmp_path / "base", tmp_path / "delta", tmp_path / "restored", "--legacy-delta", "fastchat")
    capsys.readouterr()
    assert apply_delta.main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tensor 'model.embed_tokens.weight': delta 1025 rows vs base 1024") and \
           err.count("\n") == 1 and "--no-verify" in err
    assert apply_delta.main(command + ["--no-verify"]) == 0
    assert "taken as the delta's own values" in capsys.readouterr().err
    assert_bit_for_bit(read_all(tmp_path / "restored"), target)


def panda_delta_folder(tmp_path):
    base = tiny_base()
    return base, save_model(tmp_path / "delta", legacy_delta("panda", base, fine_tuned(base, extra_rows=1)),
                            vocab_size=1025)


def wrong_bases():
    def resized(name, rows):
        return lambda base: {**base, name: torch.zeros(rows, base[name].shape[1], dtype=base[name].dtype)}

    def without(name):
        return lambda base: {key: value for key, value in base.items() if key != name}

    def integer(name):
        return lambda base: {**base, name: base[name].to(torch.int8)}

    gate = "model.layers.0.mlp.gate_proj.weight"
    return [
        ("panda", resized(gate, 160), f"tensor '{gate}': base shape [160, 64] vs target shape [176, 64]"),
        ("panda", without("model.norm.weight"), "tensor 'model.norm.weight' is in the delta but not in the base"),
        ("panda", resized("model.embed_tokens.weight", 1030),  # the delta's vocabulary only grows from the base
         "tensor 'model.embed_tokens.weight': base shape [1030, 64] vs target shape [1025, 64]"),
        ("panda", integer("model.norm.weight"), "tensor 'model.norm.weight' in"),
        ("fastchat", resized("lm_head.weight", 1000), "tensor 'lm_head.weight': delta 1024 rows vs base 1000"),
    ]


@pytest.mark.parametrize("flavour,make_base,message", wrong_bases(),
                         ids=["shape", "missing-tensor", "larger-base-vocabulary", "dtype", "smaller-base-vocabulary"])
def test_wrong_base_is_one_line_and_exit_2(tmp_path, capsys, flavour, make_base, message):
    base = tiny_base()
    target = fine_tuned(base, extra_rows=1 if flavour == "panda" else 0)
    save_model(tmp_path / "delta", legacy_delta(flavour, base, target), vocab_size=len(target["lm_head.weight"]))
    save_model(tmp_path / "base", make_base(base))
    capsys.readouterr()
    assert apply_delta.main(args(tmp_path / "base", tmp_path / "delta", tmp_path / "restored",
                                 "--legacy-delta", flavour)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "restored").exists()


def test_cli_exit_codes_and_one_line_errors(tmp_path):
    """Through `python apply_delta.py` (forked children; test_delta starts one fresh, interpreter start-up included):
    no flag on a delta without metadata; a wrong base; the flag on our own delta."""
    base, delta = panda_delta_folder(tmp_path)
    save_model(tmp_path / "small", {key: value for key, value in base.items() if key != "lm_head.weight"})

    def run(*argv):
        return run_script("apply_delta.py", list(argv))

    result = run(*args(tmp_path / "small", delta, tmp_path / "out"))
    assert (result.returncode, result.stderr) == (2, (
        f"error: {delta} has no metadata ({META_FILE}): not a delta written by make_delta.py; "
        f"for a published delta, name its flavour with --legacy-delta panda|fastchat\n"))
    result = run(*args(tmp_path / "small", delta, tmp_path / "out", "--legacy-delta", "panda"))
    assert (result.returncode, result.stderr) == (
        2, "error: tensor 'lm_head.weight' is in the delta but not in the base\n")
    (delta / META_FILE).write_text("{}")
    result = run(*args(tmp_path / "small", delta, tmp_path / "out", "--legacy-delta", "fastchat"))
    assert (result.returncode, result.stderr) == (2, (
        f"error: {delta} has a {META_FILE}, so it was written by make_delta.py; apply it without --legacy-delta\n"))
    assert not (tmp_path / "out").exists()
