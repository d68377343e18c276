"""GRPO's generation backends as the config names them (`objective.generation_backend`, conf/objective/grpo.yaml):
`engine` (modules.grpo.EngineGeneration: the training engine's own `generate`) or `vllm`, vLLM colocated on each
GPU (`VLLMColocated`), following TRL 1.16's colocate mode (trl/generation/vllm_generation.py `VLLMGeneration`) on
the vLLM release TRL 1.16 supports up to, pinned in requirements-vllm.txt (vllm==0.31.0).

vLLM in colocate mode: every rank runs its own vLLM engine in its own process (`distributed_executor_backend=
"external_launcher"`, tensor parallel 1: the whole model on each GPU, beside the training engine's share of it, in
`gpu_memory_utilization` of the GPU's memory). Each rank samples its own prompts. Before each rollout the policy's
current weights go into every rank's vLLM model (`sync_weights`): the engine's full weights as the Hugging Face export
gathers them (`consolidated_state_dict`: ZeRO-3 gathers parameter by parameter, FSDP2 builds the full state dict,
each into rank 0's CPU memory), a LoRA adapter merged into its base (models.lora.merged_copy, as `save_merged`), then
streamed tensor by tensor from rank 0 to the other ranks and into vLLM's model through `LLM.apply_model` →
`model.load_weights` (vLLM's own weight loaders: they fuse q/k/v and gate/up, and skip a tied lm_head); a sync that
leaves a vLLM parameter unset fails, as vLLM's own loader does. Prompts go in as token ids (`TokensPrompt`), the
completions come back as token ids (no detokenisation), cut after the first EOS.

Sampling: every completion is its own request with its own seed (`SamplingParams.seed`), derived from (seed, step,
the prompt's index in the dataset, j < G): the same completion gets the same seed at any world size and after a
resume. vLLM draws a seeded request's tokens from a generator of its own, so the draws repeat; whether the
completions repeat bitwise also depends on vLLM computing the same logits, which it promises only for the same
batch on the same GPU and kernels, or across batches with VLLM_BATCH_INVARIANT=1 (vLLM's reproducibility notes).

Where it cannot run, the trainer's preflight (training/config.py `validate`) and `build_backend` refuse in one line
before any model is loaded (`vllm_refusal`): no CUDA GPU,
vLLM not installed (or a version outside 0.22–0.31, TRL 1.16's range), a 4-bit base (model.load_in_4bit: its
weights cannot be merged into full-precision ones here).
"""
import hashlib
import importlib
import os

import torch
from omegaconf import OmegaConf

from general_util.dist import DistContext, broadcast_object
from general_util.errors import ConfigError
from models.model_dir import local_model_dir
from modules.grpo import EngineGeneration, cut_at_eos

VLLM_REQUIREMENTS = "requirements-vllm.txt"
SUPPORTED_VLLM = ((0, 22), (0, 31))  # TRL 1.16's range (trl/import_utils.py is_vllm_available); the pin: 0.31.0
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # `precision` -> vLLM's dtype


def cuda_available() -> bool:
    """Whether a CUDA GPU is visible (vLLM's wheel runs on CUDA only)."""
    return torch.cuda.is_available()


def vllm_refusal(load_in_4bit: bool) -> str | None:
    """Why generation_backend=vllm cannot run here (None: it can), in one line naming the fix."""
    key = "objective.generation_backend.name='vllm'"
    if not cuda_available():
        return f"{key}: vLLM runs on a CUDA GPU and none is visible here; use generation_backend.name=engine"
    try:
        vllm = importlib.import_module("vllm")
    except ImportError:
        return (f"{key}: vLLM is not installed; pip install -r {VLLM_REQUIREMENTS} (CUDA wheels) or use "
                "generation_backend.name=engine")
    version = tuple(int(part) for part in str(vllm.__version__).split(".")[:2] if part.isdigit())
    if not SUPPORTED_VLLM[0] <= version <= SUPPORTED_VLLM[1]:
        return (f"{key}: vLLM {vllm.__version__} is installed; this backend follows TRL 1.16, which supports vLLM "
                f"0.22 to 0.31: pip install -r {VLLM_REQUIREMENTS}")
    if load_in_4bit:
        return (f"{key}: a 4-bit base (model.load_in_4bit) cannot be merged into the full weights vLLM loads; use "
                "generation_backend.name=engine")
    return None


def generation_backend_problems(cfg) -> list[str]:
    """The preflight's part (training/config.py `validate`): a GRPO run asking for vLLM where it cannot run."""
    node = OmegaConf.select(cfg, "objective.generation_backend")
    if node is None or node.get("name") != "vllm":
        return []
    problem = vllm_refusal(bool(node.get("load_in_4bit")))
    return [problem] if problem else []


def build_backend(name: str, model: str, seed: int, precision: str, load_in_4bit: bool,
                  gpu_memory_utilization: float, max_model_len: int | None, max_num_seqs: int | None,
                  enable_sleep_mode: bool, load_format: str):
    """The backend `name` names (the `objective.generation_backend` node; the vLLM options serve `vllm` only)."""
    if name == "engine":
        return EngineGeneration()
    if name != "vllm":
        raise ConfigError(f"objective.generation_backend.name={name!r}: use engine or vllm")
    problem = vllm_refusal(load_in_4bit)
    if problem:
        raise ConfigError(problem)
    if not 0 < gpu_memory_utilization < 1:
        raise ConfigError(f"objective.generation_backend.gpu_memory_utilization={gpu_memory_utilization}: the share "
                          "of the GPU's memory vLLM takes must lie in (0, 1); the training engine needs the rest")
    options = {"gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len,
               "max_num_seqs": max_num_seqs, "enable_sleep_mode": enable_sleep_mode, "load_format": load_format,
               "dtype": VLLM_DTYPES[precision]}
    return VLLMColocated(str(local_model_dir(model)), seed, options)


def request_seed(seed: int, key: tuple[int, int, int]) -> int:
    """The sampling seed of the completion `key` = (step, prompt index, j): a hash of (seed, *key), 63 bits."""
    text = ",".join(str(int(part)) for part in (seed, *key)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def policy_weights(engine) -> dict[str, torch.Tensor] | None:
    """The policy's full weights under the plain model's (Hugging Face) names on global rank 0, None elsewhere: the
    engine's consolidated state dict (a collective), a LoRA adapter merged into its base."""
    state = engine.consolidated_state_dict()
    if state is None or not hasattr(engine.module, "peft_config"):
        return state
    from models.lora import merged_copy
    return merged_copy(engine.module, state).state_dict()


def streamed_from_rank0(state: dict[str, torch.Tensor] | None, ctx: DistContext):
    """Yield (name, tensor) of rank 0's `state` on every rank, one tensor at a time on this rank's device (a
    broadcast per tensor with several ranks), so that no rank holds a second full copy on its GPU; every rank must
    consume it all, in the same order."""
    listing = broadcast_object([(name, tensor.shape, tensor.dtype) for name, tensor in state.items()]
                               if ctx.is_main else None)
    for name, shape, dtype in listing:
        if ctx.is_main:
            tensor = state[name].to(ctx.device)
        else:
            tensor = torch.empty(shape, dtype=dtype, device=ctx.device)
        if ctx.world_size > 1:
            torch.distributed.broadcast(tensor, src=0)
        yield name, tensor


def load_all_weights(weights):
    """Run inside vLLM's worker (`LLM.apply_model`): load every (name, tensor) into the model; return the names of
    the model's parameters left unset (vLLM's default loader fails on any such, `track_weights_loading`)."""
    def load(model) -> list[str]:
        loaded = model.load_weights(weights)  # vLLM's models return the names they set
        return [] if loaded is None else sorted({name for name, _ in model.named_parameters()} - set(loaded))
    return load


class VLLMColocated:
    """vLLM colocated on each rank's GPU (see the module docstring). The engine starts at the first rollout, after
    the training engine took its memory; with `enable_sleep_mode` it sleeps (level 2: weights and KV cache freed)
    between rollouts and wakes for the next sync and generation."""
    name = "vllm"

    def __init__(self, model: str, seed: int, options: dict):
        self.model, self.seed, self.options = model, seed, options
        self.vllm = importlib.import_module("vllm")
        self.llm = None
        self.sleeping = False

    def start(self, ctx: DistContext) -> None:
        # the external launcher reads the rendezvous of the job's own launcher (trainer: init_distributed filled it)
        for variable, value in (("RANK", ctx.rank), ("LOCAL_RANK", ctx.local_rank), ("WORLD_SIZE", ctx.world_size)):
            os.environ[variable] = str(value)
        self.llm = self.vllm.LLM(model=self.model, tensor_parallel_size=1, distributed_executor_backend="external_launcher",
                                 seed=self.seed, **self.options)

    def sync_weights(self, engine, ctx: DistContext) -> None:
        if self.llm is None:
            self.start(ctx)
        state = policy_weights(engine)
        if self.options["enable_sleep_mode"] and self.sleeping:
            self.llm.wake_up(tags=["weights"])
        unset = self.llm.apply_model(load_all_weights(streamed_from_rank0(state, ctx)))
        missing = sorted({name for names in unset for name in names})
        if missing:
            raise RuntimeError(f"vLLM's model kept {len(missing)} parameters the engine's weights did not set: "
                               f"{', '.join(missing[:5])}")
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights

    def generate(self, engine, tokenizer, ctx, prompt_ids, sampling, keys) -> list[list[int]]:
        if self.options["enable_sleep_mode"] and self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        params = [self.vllm.SamplingParams(n=1, temperature=sampling["temperature"], top_p=sampling["top_p"],
                                           top_k=sampling["top_k"], max_tokens=sampling["max_new_tokens"],
                                           seed=request_seed(self.seed, key), stop_token_ids=[tokenizer.eos_token_id],
                                           detokenize=False)
                  for key in keys]
        prompts = [self.vllm.TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [cut_at_eos(list(output.outputs[0].token_ids), tokenizer.eos_token_id) for output in outputs]

    def release(self) -> None:
        if self.options["enable_sleep_mode"]:
            self.llm.sleep(level=2)
            self.sleeping = True
