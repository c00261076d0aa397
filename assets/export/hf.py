"""``hf_export``: the pretrained and the SFT model in ``transformers`` format, once the gate let them through.

It takes ``evaluation_report`` as an input, so the report's blocking checks
(``assets/evaluation/gate.py``) must pass before it runs: a model that does not beat its
baselines is never exported. The SFT folder ends generation at ``<|im_end|>``. Each folder has a model card
(``README.md``, :mod:`lmcore.model.card`): the evaluation's figures next to their baselines, the contamination
figures, the data lineage and the training config; ``hf_export.card`` sets its license and tags.
"""

from pathlib import Path

import dagster as dg

from assets.artifacts import MANIFEST, Checkpoint, HfExport, Report, TokenizerFile
from assets.config import config_from
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.io import read_json, sha256_file, write_json
from lmcore.model.card import CARD_FILE, CardConfig, CardInputs, Lineage, model_card
from lmcore.model.export import EOT, IM_END, export_hf

CardSettings = config_from(CardConfig)
"""Every field of :class:`lmcore.model.card.CardConfig`: the model cards' license and tags."""


class HfExportConfig(dg.Config):
    card: CardSettings = CardSettings()
    """What each folder's model card (README.md) says besides the figures (lmcore.model.card.CardConfig)."""


@dg.asset(group_name="export", kinds={"huggingface"}, code_version=code_version_of(__name__))
def hf_export(
    context: dg.AssetExecutionContext,
    config: HfExportConfig,
    pretrained_model: Checkpoint,
    sft_model: Checkpoint,
    tokenizer: TokenizerFile,
    evaluation_report: Report,
    store: ArtifactStore,
) -> HfExport:
    """``pretrained/`` and ``sft/``, each loaded by ``AutoModelForCausalLM`` and ``AutoTokenizer`` (ChatML template,
    or for ``pretrained/`` a base model's own), each with its model card."""
    models = {"pretrained": (pretrained_model, EOT), "sft": (sft_model, IM_END)}
    card_config = config.card.to_lmcore()

    def build(out: Path) -> None:
        manifest = {"evaluation_report": evaluation_report.data_version, "models": {}}
        for name, (checkpoint, end_token) in models.items():
            # the base model's own chat template stays with its continuation; the SFT model speaks ChatML
            template = tokenizer.manifest.get("chat_template") if name == "pretrained" else None
            folder = export_hf(
                checkpoint.load(), tokenizer.file, out / name, end_token=end_token, chat_template=template
            )
            card = _card(name, folder, checkpoint, pretrained_model, evaluation_report)
            (folder / CARD_FILE).write_text(model_card(card, card_config), encoding="utf-8")
            files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
            manifest["models"][name] = {"checkpoint": checkpoint.data_version, "end_token": end_token, "files": files}
        write_json(out / MANIFEST, manifest)

    published = HfExport.publish(store, "hf_export", build)
    metadata = {
        **{f"{name}_dir": dg.MetadataValue.path(str(published.model_dir(name))) for name in models},
        "architecture": pretrained_model.model_config.arch,
        "promoted_by_evaluation": evaluation_report.data_version,
    }
    inputs = {
        "pretrained_model": pretrained_model,
        "sft_model": sft_model,
        "tokenizer": tokenizer,
        "evaluation_report": evaluation_report,
    }
    return result(context, published, metadata, config=config, inputs=inputs)


def _card(name: str, folder: Path, checkpoint: Checkpoint, pretrained: Checkpoint, evaluation: Report) -> CardInputs:
    """What the card of export ``name`` (in ``folder``) says: the evaluation that let it through, its lineage
    (the pretrained checkpoint's, and the SFT checkpoint's own) and its training config."""
    return CardInputs(
        model=name,
        name=f"lmpipe-{name}",
        architecture=read_json(folder / "config.json")["model_type"],
        evaluation=evaluation.manifest,
        evaluation_version=evaluation.data_version,
        lineage=Lineage.of(pretrained.manifest, None if checkpoint is pretrained else checkpoint.manifest),
        training_config=checkpoint.manifest["config"],
    )
