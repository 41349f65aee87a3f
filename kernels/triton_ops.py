"""The Triton kernel set, with the same names and signatures as reference.py."""

from .activation import silu_and_mul
from .attention import AttnConfig, attention_tile_map, default_config, paged_attention, rope_and_paged_attention
from .decode_block import decode_attention_block, decode_block_fits
from .heuristics import choose_num_splits
from .linear import linear, rms_norm_linear
from .mlp import rms_norm_mlp
from .step_inputs import prepare_step_inputs
from .norm import fused_add_rms_norm, rms_norm
from .rope import apply_rope, rope_and_write_kv
from .sampling import argmax_logsumexp

__all__ = [
    "paged_attention",
    "rope_and_paged_attention",
    "attention_tile_map",
    "rms_norm",
    "fused_add_rms_norm",
    "apply_rope",
    "rope_and_write_kv",
    "silu_and_mul",
    "linear",
    "rms_norm_linear",
    "rms_norm_mlp",
    "argmax_logsumexp",
    "choose_num_splits",
    "AttnConfig",
    "default_config",
    "decode_attention_block",
    "decode_block_fits",
    "prepare_step_inputs",
]
