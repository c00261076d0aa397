"""``hf_export``: the pretrained and the SFT model in ``transformers`` format, once the gate let them through.

It takes ``evaluation_report`` as an input, so the report's blocking checks
(``assets/evaluation/gate.py``) must pass before it runs: a model that does not beat its
baselines is never exported. The SFT folder ends generation at ``<|im_end|>``.
"""

from pathlib import Path

import dagster as dg

from assets.artifacts import MANIFEST, Checkpoint, HfExport, Report, TokenizerFile
from assets.resources import ArtifactStore
from assets.stage import result
from assets.versions import code_version_of
from lmcore.io import sha256_file, write_json
from lmcore.model.export import EOT, IM_END, export_hf


@dg.asset(group_name="export", kinds={"huggingface"}, code_version=code_version_of(__name__))
def hf_export(
    context: dg.AssetExecutionContext,
    pretrained_model: Checkpoint,
    sft_model: Checkpoint,
    tokenizer: TokenizerFile,
    evaluation_report: Report,
    store: ArtifactStore,
) -> HfExport:
    """``pretrained/`` and ``sft/``, each loaded by ``AutoModelForCausalLM`` and ``AutoTokenizer`` (ChatML template)."""
    models = {"pretrained": (pretrained_model, EOT), "sft": (sft_model, IM_END)}

    def build(out: Path) -> None:
        manifest = {"evaluation_report": evaluation_report.data_version, "models": {}}
        for name, (checkpoint, end_token) in models.items():
            folder = export_hf(checkpoint.load(), tokenizer.file, out / name, end_token=end_token)
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
    return result(context, published, metadata, inputs=inputs)
