"""vLLM model classes with soft inputs: each is the stock class with only its outer `forward`
overridden to build `inputs_embeds` (token embeddings, soft rows replaced by their mixture;
see selar.engines.vllm). Imported by vLLM through the registry, never by selar itself."""

from __future__ import annotations

import importlib

from .vllm import ARCHITECTURES, current_state, selar_architecture


def _soft_class(arch: str, module: str):
    base = getattr(importlib.import_module(module), arch)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kw):
        # always pass inputs_embeds, so the compiled inner model sees one signature
        if inputs_embeds is None and input_ids is not None:
            state = current_state()
            inputs_embeds = (self.embed_input_ids(input_ids) if state is None
                             else state.embed(self, input_ids, positions))
        return base.forward(self, input_ids, positions, intermediate_tensors, inputs_embeds, **kw)

    return type(selar_architecture(arch), (base,), {"forward": forward, "__module__": __name__})


def __getattr__(name: str):
    for arch, module in ARCHITECTURES.items():
        if name == selar_architecture(arch):
            cls = _soft_class(arch, module)
            globals()[name] = cls
            return cls
    raise AttributeError(name)
