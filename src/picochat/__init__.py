"""picochat: the GPT lineage end to end — pre-training, GPT-1 heads, zero/few-shot evals, chat SFT, reward
model, PPO(-ptx) and serving — in one small PyTorch codebase."""

from picochat.checkpoint import load_checkpoint, save_checkpoint
from picochat.engine import Engine
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer

__all__ = ["GPT", "Engine", "GPTConfig", "Tokenizer", "load_checkpoint", "save_checkpoint"]
__version__ = "0.1.0"
