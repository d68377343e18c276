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


def active_parameter_count(model: torch.nn.Module) -> int:
    """The parameters one token's forward pass runs through, for training_flops_per_token: all of them in a
    dense model; in a mixture-of-experts model (config `num_experts` or `num_local_experts`, and
    `num_experts_per_tok`) the routed experts' parameters (those under an `experts` module) count
    num_experts_per_tok / num_experts of their total, shared experts, attention, router and embeddings in full.
    ZeRO-3-partitioned parameters count at their full size (`ds_numel`)."""
    config = model.config
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    total = routed = 0
    for name, param in model.named_parameters():
        count = getattr(param, "ds_numel", param.numel())
        total += count
        if ".experts." in f".{name}":
            routed += count
    if not (experts and top_k and routed):
        return total
    return total - routed + routed * top_k // experts
