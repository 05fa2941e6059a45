"""Trained adaptive-length latent reasoning (seed 003, "Learning When to Stop"): a latent-reasoning
wrapper around any causal LM, data, SFT with a Coconut curriculum, and GRPO with a relative
length penalty. Needs the `train` extra (peft): pip install 'selar[train]'."""

from .data import Example, load_data, load_gsm8k_aug, load_jsonl, synthetic_arithmetic
from .model import LatentHeads, LatentReasoner, load_latent_model
from .rl import RLConfig, evaluate, group_rewards, grpo_advantages, relative_length_rewards, train_rl
from .sft import SFTConfig, build_batch, train_sft

__all__ = [
    "Example",
    "load_data",
    "load_gsm8k_aug",
    "load_jsonl",
    "synthetic_arithmetic",
    "LatentHeads",
    "LatentReasoner",
    "load_latent_model",
    "RLConfig",
    "evaluate",
    "grpo_advantages",
    "group_rewards",
    "relative_length_rewards",
    "train_rl",
    "SFTConfig",
    "build_batch",
    "train_sft",
]
