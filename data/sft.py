"""Instruction (SFT) data from one set of files: the shorthand of `datasets.TokenizedDataset` with a
single source. Labels train only the responses (see `data.labels`, whose names are re-exported here
for the callers that import them from this module)."""
from data.datasets import TokenizedDataset
from data.labels import IGNORE_INDEX, build_example

__all__ = ["IGNORE_INDEX", "InstructionDataset", "build_example"]


class InstructionDataset(TokenizedDataset):
    """Records of `files` (alpaca/BELLE, COIG, conversations; see data/formats.py). Without `cache_dir`
    the tokens are cached in a private temporary folder."""

    def __init__(self, files, tokenizer, template: str = "zh", max_seq_length: int = 512, **options):
        super().__init__({"main": {"files": files}}, tokenizer, max_seq_length=max_seq_length, template=template,
                         **options)
