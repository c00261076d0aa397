"""The held-out instructions answered by the base and the fine-tuned model, for ``evaluation_report``.

Each model answers every prompt twice: decoded with ``evaluation_report.generation`` (an
:class:`lmcore.model.generate.GenerationConfig`) and greedily, for comparison (once when the
configured decoding is greedy). Per decoding and model: the answers, their ROUGE against the
references and their repetition (distinct-2, lines said three times or more). Also the report's
``rouge`` section and its markdown. Knows nothing of the other evaluations.
"""

import dataclasses
from typing import Any

from lmcore.data.tokenizer import Tokenizer
from lmcore.eval.repetition import repetition_figures
from lmcore.eval.rouge import rouge_batch
from lmcore.finetune.sft import chat_generate
from lmcore.io import ProgressFn
from lmcore.model.generate import GenerationConfig, greedy

DECODINGS = ("generation", "greedy")
"""The configured decoding, then plain greedy."""


def answers(model: Any, tok: Tokenizer, heldout: list, gen: GenerationConfig, max_new_tokens: int,
            progress: ProgressFn, what: str) -> list[str]:  # fmt: skip
    """``model``'s answer to each held-out prompt, decoded with ``gen`` (answer i with seed ``gen.seed + i``)."""
    out = []
    for i, ex in enumerate(heldout):
        kw = dataclasses.asdict(gen)
        if gen.seed is not None:
            kw["seed"] = gen.seed + i  # each answer its own draw, whatever the other prompts
        reply = chat_generate(model, tok, ex.prompt_messages, max_new_tokens=max_new_tokens, **kw)
        out.append(reply.replace("<|im_end|>", "").strip())
        progress(what, i + 1, len(heldout))
    return out


def score_answers(models: dict[str, Any], tok: Tokenizer, heldout: list, gen: GenerationConfig, max_new_tokens: int,
                  progress: ProgressFn) -> dict[str, Any]:  # fmt: skip
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


def rouge_section(scored: dict[str, Any]) -> dict[str, Any]:
    """The report's ``rouge``: ROUGE and repetition of the fine-tuned (``model``) and the base model
    (``baseline``) under the configured ``decoding``, and the same under ``greedy``."""

    def pair(decoding: str, what: str) -> dict[str, Any]:
        return {"model": scored[decoding][what]["fine_tuned"], "baseline": scored[decoding][what]["base"]}

    return {**pair("generation", "rouge"), "examples": scored["examples"], "decoding": scored["decoding"],
            "repetition": pair("generation", "repetition"),
            "greedy": {**pair("greedy", "rouge"), "repetition": pair("greedy", "repetition")}}  # fmt: skip


def generation_markdown(rouge: dict[str, Any], max_new_tokens: int) -> list[str]:
    """The decoding settings, and ROUGE next to the repetition of each model's answers under both decodings."""
    used = rouge["decoding"]
    settings = ", ".join(f"{k} {v}" for k, v in used.items())
    seeds = " (answer i: seed + i)" if used["temperature"] > 0 and used["seed"] is not None else ""
    lines = ["", "## Generation", "", f"Answers decoded with {settings}{seeds}, at most {max_new_tokens} tokens; the "
             "rows (greedy) decode the same prompts greedily.", "",
             "| decoding | model | ROUGE-L F | ROUGE-1 F | distinct-2 | answers with a line said 3+ times |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for decoding, figures in (("configured", rouge), ("greedy", rouge["greedy"])):
        for side, label in (("model", "fine-tuned"), ("baseline", "base")):
            r, rep = figures[side], figures["repetition"][side]
            distinct = f"{rep['distinct_2']:.3f}" if rep["distinct_2"] is not None else "-"
            lines.append(f"| {decoding} | {label} | {r['rougeL']['fmeasure']:.4f} | {r['rouge1']['fmeasure']:.4f} | "
                         f"{distinct} | {rep['repeated_line_share']:.2f} |")  # fmt: skip
    return lines
