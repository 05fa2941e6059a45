"""An lm-evaluation-harness task over your own JSONL/JSON/CSV file with selar eval's prompt and
grading, so lm-eval's numbers and `selar eval --data FILE`'s can be compared problem by problem:

    python -m selar.integrations.lm_eval_task problems.jsonl tasks/   # writes tasks/problems.yaml
    python -m selar.integrations.lm_eval_cli run --model selar --model_args pretrained=smollm2-135m \\
        --include_path tasks --tasks problems --apply_chat_template

The task is named after the file (as `selar eval --data` names its dataset, so the per-row
seeds agree), renders each question with the official template
(`selar.eval.protocol.render_prompt`) and grades the answer with `selar.eval.grading.grade`
(math-verify on the text after the last `</think>`), reported as `acc`. This module needs
neither lm-eval nor a model: lm-eval imports it from the task's helper file.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

from ..eval import protocol
from ..eval.datasets import load_file
from ..eval.grading import grade

HELPER = '''"""selar's prompt and grading for the lm-eval task {name} (written by selar.integrations.lm_eval_task)."""

from selar.integrations import lm_eval_task

FIELDS = {fields!r}
TEMPLATE = {template!r}
KIND = {kind!r}


def doc_to_text(doc):
    return lm_eval_task.doc_to_text(doc, FIELDS, TEMPLATE)


def doc_to_target(doc):
    return str(doc[FIELDS["answer"]])


def process_results(doc, results):
    return lm_eval_task.process_results(doc, results, FIELDS, KIND)
'''

YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: !function {module}.doc_to_text
doc_to_target: !function {module}.doc_to_target
process_results: !function {module}.process_results
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: {max_gen_toks}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def doc_to_text(doc: dict, fields: dict, template: Optional[str] = None) -> str:
    """The user message of one problem, as `selar eval` renders it."""
    return protocol.render_prompt(str(doc[fields["question"]]), template)


def process_results(doc: dict, results: list, fields: dict, kind: str = "math") -> dict:
    """{"acc": 1.0 or 0.0}: `selar eval`'s grading of the generated text against the gold answer."""
    ok, _ = grade(results[0], str(doc[fields["answer"]]), kind)
    return {"acc": float(ok)}


def write_task(
    data: str | Path,
    dest: str | Path,
    name: Optional[str] = None,
    fields: Optional[dict] = None,
    template: Optional[str] = None,
    kind: str = "math",
    max_gen_toks: int = protocol.PLAIN_MAX_NEW_TOKENS,
) -> Path:
    """Write `dest/NAME.yaml` and its helper module for the problems in `data`; returns the YAML's path.
    `fields` maps question/answer to your file's field names (as `selar eval --fields`)."""
    data = Path(data).resolve()
    fields = {"question": "question", "answer": "answer", **(fields or {})}
    load_file(str(data), fields, kind)  # fails now on a missing file or unmapped fields
    name = name or data.stem
    module = "selar_task_" + re.sub(r"\W", "_", name)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    helper = HELPER.format(name=name, fields=fields, template=template, kind=kind)
    (out / f"{module}.py").write_text(helper, encoding="utf-8")
    yaml_path = out / f"{name}.yaml"
    text = YAML.format(name=name, data=json.dumps(str(data)), module=module, max_gen_toks=int(max_gen_toks))
    yaml_path.write_text(text, encoding="utf-8")
    return yaml_path


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m selar.integrations.lm_eval_task DATA_FILE DEST_DIR [MAX_GEN_TOKS]")
    print(write_task(sys.argv[1], sys.argv[2], max_gen_toks=int(sys.argv[3]) if len(sys.argv) == 4 else 1024))
