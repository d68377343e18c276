"""Model FLOPs of training and the peak FLOP/s of common accelerators, for MFU estimates."""
import torch

# Dense bf16/fp16 tensor-core peak per GPU (no sparsity), from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H800": 989e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362e12, "A6000": 155e12, "RTX 4090": 165e12, "V100": 125e12,
}


def training_flops_per_token(num_params: int, num_layers: int, hidden_size: int, seq_len: float) -> float:
    """Forward + backward FLOPs per token: 6 per parameter (matmuls) plus causal self-attention's
    score and value products, 12 · layers · hidden · sequence length (PaLM appendix B); activation
    recomputation is not counted (model FLOPs, not hardware FLOPs)."""
    return 6 * num_params + 12 * num_layers * hidden_size * seq_len


def device_peak_flops(configured: float | None) -> float | None:
    """`configured` when set, else the table's entry for the current CUDA device, else None (unknown: no MFU)."""
    if configured:
        return float(configured)
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # most specific name first
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None
