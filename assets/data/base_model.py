"""``base_model``: the published model a run starts from (``base_model.source: hf:<hub id or directory>``), or none.

Upstream of ``tokenizer`` (which adopts its tokenizer instead of training one) and ``pretrained_model`` (which
continues from its weights), so one setting decides both, and the graph shows where a model came from. Without a
source it publishes an empty manifest whose version never changes, so nothing downstream goes stale.
"""

import dagster as dg

from assets.artifacts import MANIFEST, BaseModel
from assets.config import config_from
from assets.resources import ArtifactStore
from assets.stage import PROJECT_ROOT, result
from assets.versions import code_version_of
from lmcore.io import write_json
from lmcore.model.base_model import BaseModelConfig, prepare_base

BaseModelAssetConfig = config_from(BaseModelConfig, name="BaseModelAssetConfig")


@dg.asset(group_name="data", kinds={"huggingface"}, code_version=code_version_of(__name__))
def base_model(context: dg.AssetExecutionContext, config: BaseModelAssetConfig, store: ArtifactStore) -> BaseModel:
    """A Hugging Face model's tokenizer (with the ChatML tokens) and weights as lmcore's step-0 checkpoint."""
    cfg = config.to_lmcore()

    def build(out):
        lineage = prepare_base(cfg, PROJECT_ROOT, out) if cfg.source else None
        write_json(out / MANIFEST, {"base_model": lineage})

    published = BaseModel.publish(store, "base_model", build)
    lineage = published.lineage
    if lineage is None:
        metadata = {"source": "none: the tokenizer is trained and pretraining starts from new weights"}
    else:
        metadata = {
            "source": lineage["source"],
            "revision": lineage["revision"] or "a local directory",
            "weights_sha256": lineage["weights_sha256"],
            "architecture": lineage["architecture"],
            "added_tokens": ", ".join(lineage["added_tokens"]) or "none",
            "vocab_size": lineage["vocab_size"],
            "chat_template": "its own" if lineage["chat_template"] else "none (ChatML)",
        }
        context.log.info(f"base model {lineage['source']}: {metadata}")
    return result(context, published, metadata, config=config)
