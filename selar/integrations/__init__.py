"""selar inside the tools people already use.

- `hf_generate`: transformers' `custom_generate` entry, so `model.generate(..., custom_generate=PATH,
  method="selar", tau=0.5)` runs selar's decode loop on an already loaded transformers model;
  `hub_folder` writes the folder to pass as PATH or to publish on the Hugging Face Hub.
- `lm_eval_model`: the `selar` model of lm-evaluation-harness (`lm_eval --model selar`), with
  `lm_eval_cli` to run lm-eval's command line with it registered and `lm_eval_task` to write an
  lm-eval task that uses selar's prompt and grading on a JSONL file.

Nothing in selar imports this package (it sits at the top layer, beside the CLI); each module
imports its tool (transformers, lm_eval) itself.
"""
