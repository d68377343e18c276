"""GRPO's vLLM generation backend (training/vllm_generation.py, `objective.generation_backend.name=vllm`).

vLLM needs CUDA and its ~320 MB wheel, which CI has neither of. So:
- where it cannot run, the trainer's preflight refuses it in one line, exit 2 (no GPU; vLLM not installed; a vLLM
  outside TRL 1.16's range; a 4-bit base);
- our side of the contract with vLLM is checked against a test double of the `vllm` module put into `sys.modules`
  for one real GRPO run on the tiny model (conf/demo/grpo_logiqa.yaml, in this process): it records the `LLM(...)`
  keywords, every call, the prompts and `SamplingParams` of each request and every `load_weights` call with the
  weights' names and values, and answers each request with completion ids made from its seed. The test then
  checks that the weights vLLM is handed before each rollout are the engine's at that moment (after every
  optimizer update so far: the checkpoint of the step before, bitwise), that prompts go in as token ids, that
  each completion has its own seed and that the completions flow into the same rollout and loss path as the
  engine's own. The double checks our calls, not vLLM itself: that vLLM's loaders take these names, that
  external_launcher colocates as TRL uses it, and vLLM's sampling are not verified here (no machine here had vLLM).
"""
import json
import os
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra.utils import instantiate
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import training.vllm_generation as vllm_generation
from general_util.dist import free_port
from general_util.errors import UserError, one_line
from models.model_dir import local_model_dir
from tests.forked_ranks import REPO
from tests.trainer_runs import FAST, compose_config, run_trainer, scalar_values, train_in_process
from training.config import validate

GRPO = ("conf/demo", "grpo_logiqa")
VLLM = ["objective.generation_backend.name=vllm"]
STEPS, PROMPTS, GENERATIONS = 3, 2, 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal on a machine without CUDA")
def test_refused_on_cpu_in_one_line_by_the_preflight(tmp_path):
    result = run_trainer(tmp_path / "out", FAST + VLLM, config=GRPO, check=False)
    assert result.returncode == 2
    stderr = result.stderr.strip()
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr == ("error: objective.generation_backend.name='vllm': vLLM runs on a CUDA GPU and none is visible "
                      "here; use generation_backend.name=engine")
    assert not (tmp_path / "out" / "logs").exists()  # nothing was set up


def refusal(overrides: list[str]) -> str:
    with pytest.raises(UserError) as refused:
        validate(compose_config(VLLM + overrides, GRPO), world_size=1)
    return one_line(refused.value)


def test_refused_where_vllm_is_missing_or_unsupported(monkeypatch):
    monkeypatch.setattr(vllm_generation, "cuda_available", lambda: True)  # as on a GPU machine
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, whether or not it is installed
    assert refusal([]) == ("error: objective.generation_backend.name='vllm': vLLM is not installed; pip install -r "
                           "requirements-vllm.txt (CUDA wheels) or use generation_backend.name=engine")
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.34.0"))
    assert "vLLM 0.34.0 is installed; this backend follows TRL 1.16, which supports vLLM 0.22 to 0.31" in refusal([])
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.31.0"))
    assert "a 4-bit base (model.load_in_4bit) cannot be merged" in refusal(["model.load_in_4bit=true", "model.use_peft=true"])
    validate(compose_config(VLLM, GRPO), world_size=1)  # CUDA and a supported vLLM: accepted


# ---- the double ---------------------------------------------------------------------------------------------

class VLLMDouble:
    """What the backend calls of `vllm`, recording everything. Its "model" is the tiny LLaMA's architecture under
    the Hugging Face names: `load_weights` copies each named tensor into it (an unknown name fails, as vLLM's
    AutoWeightsLoader does) and returns the names it set. A request's completion is made of its seed: the letter
    token seed % 4, EOS, and after the EOS a stray token every third seed (which must be cut)."""

    def __init__(self, tokenizer):
        self.letters = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"][-1] for letter in "ABCD"]
        self.eos = tokenizer.eos_token_id
        self.llm_kwargs, self.calls, self.loads, self.requests, self.completions = [], [], [], [], []
        double = self

        class LLM:
            def __init__(self, **kwargs):
                double.llm_kwargs.append(kwargs)
                self.model = LoadableModel(double, REPO / kwargs["model"])

            def apply_model(self, func):
                double.calls.append("apply_model")
                return [func(self.model)]

            def generate(self, prompts, sampling_params, use_tqdm):
                double.calls.append("generate")
                assert len(prompts) == len(sampling_params) and use_tqdm is False
                double.requests.append(list(zip(prompts, sampling_params)))
                outputs = []
                for params in sampling_params:
                    tokens = [double.letters[params.seed % 4], double.eos] + [double.letters[0]] * (params.seed % 3 == 0)
                    outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tokens)]))
                    double.completions.append(tokens)
                return outputs

            def sleep(self, level):
                double.calls.append(f"sleep({level})")

            def wake_up(self, tags=None):
                double.calls.append(f"wake_up({','.join(tags)})")

            def reset_prefix_cache(self):
                double.calls.append("reset_prefix_cache")

        class SamplingParams:
            def __init__(self, **kwargs):
                self.__dict__.update(kwargs)

        self.module = types.SimpleNamespace(__version__="0.31.0", LLM=LLM, SamplingParams=SamplingParams,
                                            TokensPrompt=lambda **fields: dict(fields))


class LoadableModel:
    def __init__(self, double: VLLMDouble, model_dir: Path):
        self.double = double
        self.model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))

    def named_parameters(self):
        return self.model.named_parameters()

    def load_weights(self, weights):
        parameters = dict(self.model.named_parameters())
        received = {}
        for name, tensor in weights:
            if name not in parameters:
                raise ValueError(f"There is no module or parameter named '{name}'")
            received[name] = tensor.detach().clone()
            parameters[name].data.copy_(tensor)
        self.double.loads.append(received)
        return set(received)


def run_with_double(out: Path, overrides: list[str]) -> VLLMDouble:
    """A GRPO run with the vLLM backend against a fresh double; a checkpoint every step."""
    double = VLLMDouble(AutoTokenizer.from_pretrained(REPO / "models/tiny_llama"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "vllm", double.module)
        patch.setattr(vllm_generation, "cuda_available", lambda: True)  # the double stands in for the GPU too
        train_in_process(out, FAST + VLLM + ["save_steps=1", f"per_gpu_train_batch_size={PROMPTS}"] + overrides, GRPO)
    return double


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """STEPS steps under ZeRO-3 (the weights gathered parameter by parameter), vLLM's sleep mode on."""
    out = tmp_path_factory.mktemp("grpo_vllm")
    double = run_with_double(out, [f"max_steps={STEPS}", "deepspeed@ds_cfg=zero3",
                                   "objective.generation_backend.enable_sleep_mode=true"])
    return out, double, AutoTokenizer.from_pretrained(REPO / "models/tiny_llama")


def test_vllm_is_started_once_colocated_as_trl_does(run):
    _, double, _ = run
    assert double.llm_kwargs == [{
        "model": str(local_model_dir("models/tiny_llama")), "tensor_parallel_size": 1, "distributed_executor_backend": "external_launcher",
        "seed": 42, "gpu_memory_utilization": 0.3, "max_model_len": None, "max_num_seqs": None,
        "enable_sleep_mode": True, "load_format": "dummy", "dtype": "float32"}]
    first = ["apply_model", "reset_prefix_cache", "generate", "sleep(2)"]
    later = ["wake_up(weights)", "apply_model", "reset_prefix_cache", "wake_up(kv_cache)", "generate", "sleep(2)"]
    assert double.calls == first + later * (STEPS - 1)


def test_weights_are_synced_before_every_rollout_and_equal_the_engines(run):
    out, double, _ = run
    assert len(double.loads) == STEPS  # one sync per rollout, after the updates of the step before
    initial = load_file(REPO / "models/tiny_llama/model.safetensors")
    for step, received in enumerate(double.loads):  # before rollout step + 1: the weights after `step` updates
        engine_weights = initial if step == 0 else load_file(out / f"checkpoint-{step}" / "model.safetensors")
        assert sorted(received) == sorted(engine_weights), step
        assert all(torch.equal(received[name], engine_weights[name]) for name in engine_weights), step
    changed = [name for name in initial if not torch.equal(double.loads[-1][name], initial[name])]
    assert changed  # the updates reached vLLM


def test_lora_under_fsdp2_syncs_the_merged_weights(tmp_path):
    """LoRA: vLLM gets the adapter merged into the base, as `save_merged` writes it (FSDP2: its full state dict)."""
    double = run_with_double(tmp_path, ["max_steps=2", "engine=fsdp2", "model.use_peft=true", "save_merged=true",
                                        "learning_rate=1e-2"])
    initial = load_file(REPO / "models/tiny_llama/model.safetensors")
    merged = load_file(tmp_path / "checkpoint-1" / "merged" / "model.safetensors")
    assert len(double.loads) == 2 and sorted(double.loads[0]) == sorted(initial) == sorted(merged)
    assert all(torch.equal(double.loads[0][name], initial[name]) for name in initial)  # lora_B starts at 0
    assert all(torch.equal(double.loads[1][name], merged[name]) for name in merged)
    assert any(not torch.equal(merged[name], initial[name]) for name in merged)  # the adapter moved the weights


def test_prompts_go_in_as_token_ids_and_every_completion_has_its_own_seed(run):
    _, double, tokenizer = run
    cfg = compose_config([], GRPO)
    dataset = instantiate(cfg.train_dataset, tokenizer=tokenizer)
    sampling = (1, cfg.objective.temperature, cfg.objective.top_p, 0, cfg.objective.max_new_tokens)
    known = [item["prompt_ids"] for item in dataset.records]
    assert len(double.requests) == STEPS
    seeds = []
    for step, requests in enumerate(double.requests):
        assert len(requests) == PROMPTS * GENERATIONS
        for i, (prompt, params) in enumerate(requests):
            assert list(prompt) == ["prompt_token_ids"] and all(type(t) is int for t in prompt["prompt_token_ids"])
            assert prompt["prompt_token_ids"] in known
            assert prompt["prompt_token_ids"] == requests[i - i % GENERATIONS][0]["prompt_token_ids"]  # G per prompt
            assert (params.n, params.temperature, params.top_p, params.top_k, params.max_tokens) == sampling
            assert params.stop_token_ids == [tokenizer.eos_token_id] and params.detokenize is False
            index = known.index(prompt["prompt_token_ids"])
            assert params.seed == vllm_generation.request_seed(42, (step, index, i % GENERATIONS))
            seeds.append(params.seed)
    assert len(set(seeds)) == len(seeds)


def test_the_completions_flow_into_the_rollouts_and_the_loss(run):
    out, double, tokenizer = run
    eos = tokenizer.eos_token_id
    cut = [tokens[:tokens.index(eos) + 1] for tokens in double.completions]  # the stray token after EOS dropped
    for step in range(STEPS):
        rows = [json.loads(line) for line in (out / "rollouts" / f"step-{step + 1}.jsonl").read_text().splitlines()]
        mine = cut[step * PROMPTS * GENERATIONS:(step + 1) * PROMPTS * GENERATIONS]
        assert [row["completion"] for row in rows] == tokenizer.batch_decode(mine, skip_special_tokens=True)
    lengths = scalar_values(out, "train/completions/mean_length")
    assert lengths == pytest.approx([2.0] * STEPS)  # letter + EOS, whatever followed the EOS
    losses = scalar_values(out)
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))


def train_on_rank(rank: int, world_size: int, port: int, out: str, overrides: list[str]) -> None:
    """One rank of a GRPO run against its own double (started by torch.multiprocessing); what the double recorded
    goes to `out/double.rank<r>.pt`."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import trainer
    from general_util.dist import exit_process
    double = VLLMDouble(AutoTokenizer.from_pretrained(REPO / "models/tiny_llama"))
    sys.modules["vllm"] = double.module
    vllm_generation.cuda_available = lambda: True
    trainer.run(compose_config(FAST + VLLM + ["save_steps=1"] + overrides, GRPO, Path(out)))
    seeds = [[params.seed for _, params in requests] for requests in double.requests]
    torch.save({"loads": double.loads, "seeds": seeds}, Path(out) / f"double.rank{rank}.pt")
    exit_process(0)


@pytest.mark.slow  # two ranks
def test_two_ranks_each_get_rank0s_weights_and_the_seeds_of_one_rank(run, tmp_path):
    """Under ZeRO-3 on 2 ranks every rank's vLLM gets the full weights (gathered to rank 0, then broadcast tensor by
    tensor), the engine's at that moment; the ranks' seeds together are those of 1 rank at the same global batch."""
    one_rank_out, one_rank, _ = run
    processes = mp.start_processes(train_on_rank, nprocs=2, join=False, start_method="forkserver", args=(
        2, free_port(), str(tmp_path), ["max_steps=2", "deepspeed@ds_cfg=zero3", "per_gpu_train_batch_size=1"]))
    deadline = time.monotonic() + 600  # only a hang (ranks out of step in the weights' broadcasts) gets near it
    while not processes.join(timeout=5):
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.terminate()
            pytest.fail("the two-rank run hung")
    initial = load_file(REPO / "models/tiny_llama/model.safetensors")
    after_step_1 = load_file(tmp_path / "checkpoint-1" / "model.safetensors")
    ranks = [torch.load(tmp_path / f"double.rank{rank}.pt") for rank in range(2)]
    for recorded in ranks:
        assert len(recorded["loads"]) == 2
        for received, expected in zip(recorded["loads"], (initial, after_step_1)):
            assert sorted(received) == sorted(expected)
            assert all(torch.equal(received[name], expected[name]) for name in expected)
    for step in range(2):
        mine = sorted(seed for recorded in ranks for seed in recorded["seeds"][step])
        theirs = sorted(params.seed for _, params in one_rank.requests[step])
        assert mine == theirs
