"""In-process training runs whose logged values are read back exactly (the float64 values the loop logs, through
TrainerHooks.on_log), for comparisons finer than TensorBoard's float32 events."""
from pathlib import Path

from tests.trainer_runs import compose_config


def logged_values(output_dir: Path, overrides: list[str], config: tuple[str, str] = ("conf/demo", "sft")) -> list[dict]:
    """Every log line's values of a 1-rank run of `config` with `overrides`, trained in this process (one thread,
    as a forked rank runs), without checkpoints."""
    import torch

    from general_util.dist import init_distributed
    from trainer import TrainerHooks, build_trainer
    ctx = init_distributed()
    cfg = compose_config(overrides, config, output_dir=output_dir)
    logged = []
    trainer = build_trainer(cfg, ctx, hooks=TrainerHooks(on_log=lambda step, values: logged.append(dict(values)),
                                                        save_checkpoints=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.run()
    finally:
        torch.set_num_threads(threads)
        trainer.engine.close()
    return logged
