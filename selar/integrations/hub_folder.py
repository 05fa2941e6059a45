"""The folder transformers loads with `model.generate(custom_generate=PATH_OR_REPO)`: a
`custom_generate/generate.py` (re-exporting `selar.integrations.hf_generate.generate`), its
`requirements.txt` (selar) and a README (the Hub's model card, tagged `custom_generate`).

    python -m selar.integrations.hub_folder selar-generate   # writes the folder
    hf upload YOUR_NAME/selar-generate selar-generate .      # publishes it (huggingface_hub's CLI)

The repository also keeps this folder under `integrations/selar-generate/` (a test checks that
the two are the same).
"""

from __future__ import annotations

import sys
from pathlib import Path

GENERATE_PY = '''"""selar (selective latent reasoning) as a transformers custom_generate method.

The decoding loop is the `selar` package's: install it first (`pip install selar`). See README.md.
"""

from selar.integrations.hf_generate import generate

__all__ = ["generate"]
'''

REQUIREMENTS = "selar>=0.1.0\n"

README = """---
library_name: transformers
tags:
  - custom_generate
---

# selar-generate: selective latent reasoning in `model.generate`

A [custom generation method](https://huggingface.co/docs/transformers/generation_strategies#custom-generation-methods)
that runs [selar](https://pypi.org/project/selar/)'s decoding loop on any decoder-only transformers
model: SeLaR (soft inputs at uncertain steps of the reasoning), its baselines (CoT, Soft Thinking,
SwiR) and the other registered methods.

**Needs the `selar` package** (`pip install selar`): this repository holds only the entry point.

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("Qwen/Qwen3-1.7B")
model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-1.7B", dtype="auto")
inputs = tok.apply_chat_template([{"role": "user", "content": "What is 17 * 23?"}],
                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, custom_generate="YOUR_NAME/selar-generate", trust_remote_code=True,
                     tokenizer=tok, method="selar", tau=0.5, max_new_tokens=512)
print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Arguments

- `method` (default `"selar"`): any selar method (`cot`, `selar`, `soft-thinking`, `swir`, ...),
  with its options as keywords (`tau`, `k`, `push_weight`, ...).
- transformers' settings: `do_sample`, `temperature`, `top_p`, `top_k`, `min_p`,
  `max_new_tokens`/`max_length`, `min_new_tokens`/`min_length`, `eos_token_id`, `pad_token_id`,
  `stop_strings`, `num_return_sequences`, `attention_mask`, `return_dict_in_generate`,
  `output_scores`, `output_logits`. Greedy unless `do_sample=True`.
- selar's own: `seed` (rows are seeded by it, not by torch's generator), `soft_scope`, `stop`,
  `force_answer_at` (the answer forced at that many tokens), `tokenizer` (loaded from the model's
  folder when not given).

Beam search, repetition penalties, logits processors, stopping criteria and streamers are not
implemented: passing one raises an error.

## Output

The `sequences` tensor (inputs followed by the new tokens, finished rows padded), or with
`return_dict_in_generate=True` transformers' decoder-only output (`sequences`, `scores`, `logits`)
plus `soft` (per new token: was the next input a soft mixture), `num_soft_steps` and
`finish_reasons`.
"""

FILES = {
    "custom_generate/generate.py": GENERATE_PY,
    "custom_generate/requirements.txt": REQUIREMENTS,
    "README.md": README,
}


def write(dest: str | Path) -> Path:
    """Write the folder at `dest` (created if needed); returns its path."""
    root = Path(dest)
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m selar.integrations.hub_folder DEST")
    print(write(sys.argv[1]))
