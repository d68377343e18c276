"""lm-evaluation-harness' model interface (`TemplateLM`) on the live in-memory model: the DeepSpeed engine
during training (ZeRO-1/2/3, LoRA through peft) or a plain transformers model in the checkpoint sweep. No
weights are reloaded from disk.

Requests are split here, not by lm-eval: lm-eval sees a world of one (rank 0), so every rank builds the same
requests and runs lm-eval's own filters and metrics unchanged on the same responses. Each request method
scores a contiguous share of its requests on this rank (no duplicates), longest first, `batch_size` requests
per model call, every rank making as many calls (`evaluate_in_lockstep`; generation with `synced_gpus` under
ZeRO-3), and gathers every rank's responses onto every rank.

Tokenization, truncation, stop sequences and decoding follow lm-eval's `HFLM` (`tok_encode`,
`_loglikelihood_tokens`, `generate_until`, `_model_generate` in lm_eval/models/huggingface.py of 0.4.13);
log-likelihoods are computed by `modules.scoring` (the same definitions, options sharing one context row).
Imports lm-eval: load it only where lm-eval is installed (post_processors/lm_eval_harness.py does).
"""
import json

import torch
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                  postprocess_generated_text, resolve_max_length)
from lm_eval.models.utils_hf import stop_sequences_criteria

from general_util.dist import current
from modules.generation import needs_synced_generation
from modules.loss_impl import LossSettings
from modules.scoring import Request, score_batch
from post_processors.gathering import evaluate_in_lockstep


class LiveLM(TemplateLM):
    """`model`: a DeepSpeed engine or a transformers causal LM (or peft model). `max_length`: the context
    length (None: the model config's, as HFLM resolves it); `max_gen_toks`: tokens to generate when the task
    does not say (HFLM's 256); `add_bos_token`: None leaves it to the tokenizer (HFLM's default); `loss`: how the
    log-likelihoods are computed (loss_impl)."""

    def __init__(self, model, tokenizer, batch_size: int, max_length: int | None = None, max_gen_toks: int = 256,
                 add_bos_token: bool | None = None, *, loss: LossSettings):
        super().__init__()  # rank 0 of a world of one, as lm-eval sees it
        self.model, self.module = model, getattr(model, "module", model)  # the engine scores; its module generates
        self.tokenizer, self.batch_size, self.max_gen_toks = tokenizer, batch_size, max_gen_toks
        self.max_length = max_length or resolve_max_length(self.module.config, tokenizer)
        self.add_bos_token, self.loss = add_bos_token, loss
        self.ctx = current()
        self._device = self.ctx.device
        self.synced_gpus = needs_synced_generation(model, self.ctx.world_size)
        # HFLM's configure_pad_token, without changing the shared tokenizer
        self.pad_token_id = next(i for i in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id)
                                 if i is not None)

    # ---- tokenization (HFLM's) ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            if has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
                add_special_tokens = False  # the prompt already starts with BOS
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        encoding = self.tokenizer.encode(string, **options)
        return encoding[-left_truncate_len:] if left_truncate_len else encoding

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ---- requests -----------------------------------------------------------------------------------
    def _spread(self, indices: list[int], length, run, description: str) -> dict[int, object]:
        """`run(batch of indices) -> [(index, response)]` over this rank's share of `indices`, longest first
        (`length(index)`), all ranks in lockstep; every rank's responses, by index."""
        merged = dict(evaluate_in_lockstep(indices, run, self.batch_size, description, length, unit="request"))
        if sorted(merged) != sorted(indices):
            raise RuntimeError(f"gathered {len(merged)} responses for {len(indices)} requests")
        return merged

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.ctx.is_main)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """`requests`: (strings or None, context tokens, continuation tokens) → (summed log-prob, is greedy)."""
        def run(batch: list[int]) -> list:
            scores = score_batch(self.model, [Request(requests[i][1], requests[i][2]) for i in batch], self.max_length,
                                 self.device, self.loss)
            return list(zip(batch, zip(scores.sums, scores.greedy)))

        if not requests:
            return []
        merged = self._spread(list(range(len(requests))), lambda i: len(requests[i][1]) + len(requests[i][2]), run,
                              "lm-eval loglikelihood")
        return [merged[i] for i in range(len(requests))]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood over disjoint windows of `max_length` tokens (HFLM's windows)."""
        windows, owners = [], []
        for owner, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(lm_eval_utils.make_disjoint_window, lm_eval_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (loglikelihood, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += loglikelihood
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, as the task's generation_kwargs say) continuations, cut at the first stop
        sequence; requests with the same generation_kwargs are batched together."""
        args = [request.args for request in requests]
        groups: dict[str, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        responses: dict[int, str] = {}
        for indices in groups.values():  # the same groups in the same order on every rank
            kwargs = normalize_gen_kwargs(args[indices[0]][1], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise ValueError(f"max_gen_toks={max_gen_toks} leaves no room for the prompt in max_length={self.max_length}")
            contexts = {i: self.tok_encode(args[i][0], left_truncate_len=self.max_length - max_gen_toks) for i in indices}
            responses.update(self._spread(indices, lambda i: len(contexts[i]),
                                          lambda batch: self._generate(batch, contexts, until, max_gen_toks, dict(kwargs)),
                                          "lm-eval generate_until"))
        return [responses[i] for i in range(len(requests))]

    @torch.no_grad()
    def _generate(self, batch: list[int], contexts: dict[int, list[int]], until: list[str], max_gen_toks: int,
                  kwargs: dict) -> list[tuple[int, str]]:
        width = max(len(contexts[i]) for i in batch)
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(contexts[i])) + contexts[i] for i in batch],
                                 device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(contexts[i])) + [1] * len(contexts[i]) for i in batch],
                                      device=self.device)
        # HFLM._model_generate: temperature 0 means greedy
        kwargs["temperature"] = kwargs.get("temperature", 0.0)
        if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
            kwargs["do_sample"] = False
        if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
            kwargs.pop("temperature")
        output = self.module.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_length=kwargs.pop("max_length", width + max_gen_toks),
            stopping_criteria=stop_sequences_criteria(self.tokenizer, until, width, len(batch)),
            pad_token_id=self.pad_token_id, use_cache=True, synced_gpus=self.synced_gpus, **kwargs)
        texts = [self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in output.tolist()]
        return [(i, postprocess_generated_text(text, until, None)) for i, text in zip(batch, texts)]
