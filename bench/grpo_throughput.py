"""GRPO throughput on the tiny LLaMA (conf/demo/grpo_logiqa.yaml): completions per second, the optimizer-step time and the
share of it spent generating (the objective's rollout: weight sync, sampling, decoding, rewards, advantages), per
generation backend: the engine's own `generate` (HF, `engine`) and vLLM colocated on the GPU (`vllm`, needs CUDA and
requirements-vllm.txt; elsewhere the one-line refusal, exit 2, before anything is measured). One process, CPU or the
first GPU; the first step (warm-up; vLLM's start) is left out.

    python -m bench.grpo_throughput                          # 12 steps, 4 prompts × 8 completions of 32 tokens
    python -m bench.grpo_throughput --backend engine vllm    # both, one after the other (a GPU with vLLM)
    python -m bench.grpo_throughput --quick                  # 3 steps, tiny: checks the measuring code (CI)"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


BACKENDS = ("engine", "vllm")


def measure(steps: int, prompts: int, generations: int, max_new_tokens: int, backend: str = "engine") -> dict:
    from hydra import compose, initialize_config_dir

    from general_util.dist import fill_single_process_env, init_distributed
    from trainer import TrainerHooks, build_trainer
    fill_single_process_env()
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(str(REPO / "conf" / "demo"), version_base="1.3"):
        cfg = compose("grpo_logiqa", overrides=[
            f"output_dir={out}", f"max_steps={steps}", f"per_gpu_train_batch_size={prompts}", "logging_steps=1",
            f"objective.num_generations={generations}", f"objective.max_new_tokens={max_new_tokens}",
            "objective.rollouts_dir=null", "report_to=[]", f"train_file={REPO / 'data/samples/logiqa_v2'}",
            f"objective.generation_backend.name={backend}"])
        step_ends: dict[int, float] = {}
        hooks = TrainerHooks(on_log=lambda step, _: step_ends.setdefault(step, time.perf_counter()),
                             save_checkpoints=False)
        trainer = build_trainer(cfg, init_distributed(), hooks=hooks)
        rollout, generation_times = trainer.objective.rollout, []

        def timed_rollout(*args, **kwargs):
            start = time.perf_counter()
            batches = rollout(*args, **kwargs)
            generation_times.append(time.perf_counter() - start)
            return batches
        trainer.objective.rollout = timed_rollout
        trainer.train()
    step_times = [step_ends[s] - step_ends[s - 1] for s in range(2, steps + 1)]
    step_time = sum(step_times) / len(step_times)
    generation = sum(generation_times[1:]) / len(generation_times[1:])
    return {"backend": backend, "device": str(trainer.ctx.device), "prompts_per_step": prompts,
            "completions_per_step": prompts * generations, "max_new_tokens": max_new_tokens,
            "step_s": step_time, "generation_s": generation, "generation_share": generation / step_time,
            "completions_per_s": prompts * generations / step_time}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 steps of 2 prompts × 2 completions of 4 tokens")
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=["engine"],
                        help="generation backends to measure, in this order (default: engine)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if "vllm" in args.backend:
        from training.vllm_generation import vllm_refusal
        refusal = vllm_refusal(load_in_4bit=False)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            sys.exit(2)
    results = [measure(3, 2, 2, 4, backend) if args.quick else measure(12, 4, 8, 32, backend) for backend in args.backend]
    text = json.dumps(results if len(results) > 1 else results[0], indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(f"{'backend':<12} {'completions/s':>14} {'step s':>8} {'generation s':>13} {'share':>6}")
    for result in results:
        print(f"{result['backend']:<12} {result['completions_per_s']:>14.2f} {result['step_s']:>8.3f} "
              f"{result['generation_s']:>13.3f} {result['generation_share']:>6.1%}")
    print(text)


if __name__ == "__main__":
    main()
