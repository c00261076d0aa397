"""Task-adaptive pretraining: train the LM further on a task's own texts, labels unused.

The plain next-token objective on each text followed by ``<|endoftext|>``, as in
pretraining, packed several texts to a row with attention kept inside each
(Gururangan et al. 2020, "Don't Stop Pretraining"). The classifiers of
``lmcore.finetune.classify`` can start from the result.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmcore.data.tokenizer import Tokenizer
from lmcore.finetune.chat import encode_plain
from lmcore.finetune.sft import FinetuneRun, finetune, init_model_config
from lmcore.finetune.sft_data import SFTExample, pack_examples
from lmcore.train.job import Callback
from lmcore.train.summary import TrainSummary


def text_examples(texts: Sequence[str], tokenizer: Tokenizer, context_length: int) -> list[SFTExample]:
    """Each text as a plain LM example (first ``context_length`` tokens + ``<|endoftext|>``), loss on every token."""
    eot = tokenizer.eot_id
    out = []
    for ids in encode_plain(tokenizer, list(texts)):
        ids = ids[:context_length] + [eot]
        out.append(SFTExample(ids=ids, mask=[1] * len(ids)))
    return out


def adapt_lm(
    run: FinetuneRun,
    train_texts: Sequence[str],
    validation_texts: Sequence[str],
    tokenizer: Tokenizer,
    *,
    callback: Callback | None = None,
) -> TrainSummary:
    """Continue next-token training on the task's texts (labels unused), packed; returns ``finetune``'s summary."""
    mc, _ = init_model_config(run.init_checkpoint)
    splits = [
        pack_examples(text_examples(t, tokenizer, mc.context_length), mc.context_length)
        for t in (train_texts, validation_texts)
    ]
    return finetune(run, *splits, pad_id=tokenizer.pad_id, callback=callback)
