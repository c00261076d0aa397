"""The held-out instructions answered by the base and the fine-tuned model, for ``evaluation_report``.

Each model answers every prompt twice: decoded with ``evaluation_report.generation`` (an
:class:`lmcore.model.generate.GenerationConfig`) and greedily, for comparison (once when the
configured decoding is greedy). Per decoding and model: the answers, their ROUGE against the
references and their repetition (distinct-2, lines said three times or more). Knows nothing of the
other evaluations; the report (``lmcore.eval.report``) reads these figures.
"""

import dataclasses
from typing import Any

from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.repetition import repetition_figures
from lmcore.eval.rouge import rouge_batch
from lmcore.eval.table import DECODINGS
from lmcore.finetune.sft import chat_generate
from lmcore.io import ProgressFn
from lmcore.model.generate import GenerationConfig, greedy


def answers(
    model: Any,
    tok: Tokenizer,
    heldout: list,
    gen: GenerationConfig,
    max_new_tokens: int,
    progress: ProgressFn,
    what: str,
) -> list[str]:
    """``model``'s answer to each held-out prompt, decoded with ``gen`` (answer i with seed ``gen.seed + i``)."""
    out = []
    for i, ex in enumerate(heldout):
        # each answer its own draw, whatever the other prompts
        settings = gen if gen.seed is None else dataclasses.replace(gen, seed=gen.seed + i)
        reply = chat_generate(model, tok, ex.prompt_messages, settings, max_new_tokens=max_new_tokens)
        out.append(reply.replace("<|im_end|>", "").strip())
        progress(what, i + 1, len(heldout))
    return out


def score_answers(
    models: dict[str, Any],
    tok: Tokenizer,
    heldout: list,
    gen: GenerationConfig,
    max_new_tokens: int,
    progress: ProgressFn,
) -> dict[str, Any]:
    """Per decoding (``generation``: ``gen``; ``greedy``): each model's answers, ROUGE and repetition; 4 samples."""
    refs = [ex.reference for ex in heldout]
    out: dict[str, Any] = {"examples": len(heldout), "decoding": dataclasses.asdict(gen), "samples": []}
    for decoding, settings in zip(DECODINGS, (gen, greedy()), strict=True):
        generations = {}
        for name, model in models.items():
            if decoding == "greedy" and gen.is_greedy():
                generations[name] = out["generation"]["generations"][name]  # the same answers: not decoded twice
                continue
            what = f"generate ({name})" if decoding == "generation" else f"generate ({name}, greedy)"
            generations[name] = answers(model, tok, heldout, settings, max_new_tokens, progress, what)
        out[decoding] = {
            "generations": generations,
            "rouge": {name: rouge_batch(preds, refs) for name, preds in generations.items()},
            "repetition": {name: repetition_figures(preds) for name, preds in generations.items()},
        }
    for i, ex in enumerate(heldout[:4]):
        sample = {"prompt": ex.prompt, "reference": ex.reference}
        for decoding, suffix in zip(DECODINGS, ("", " (greedy)"), strict=True):
            sample.update({name + suffix: g[i] for name, g in out[decoding]["generations"].items()})
        out["samples"].append(sample)
    return out
