"""picochat: the GPT lineage end to end in one small PyTorch codebase."""
