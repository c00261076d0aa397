"""Starting from a published model: a hub-layout directory or a cached hub id becomes lmcore's tokenizer (with the
ChatML tokens it lacked) and a step-0 checkpoint whose logits are the model's own; bad sources are refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmcore.data.tokenizer import IM_END, IM_START, PAD, load_tokenizer
from lmcore.model.base_model import BaseModelConfig, base_checkpoint, grow_vocab, prepare_base, resolve_source
from lmcore.model.checkpoint import load_trained_model
from lmcore.model.gpt import GPT, tiny
from tests.hub_models import cache_as_hub, save_gpt2, save_qwen2

transformers = pytest.importorskip("transformers")


def _logits_diff(hf_dir, model, vocab: int) -> float:
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    idx = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(idx).logits
        ours, _ = model.eval()(idx)
    return (theirs - ours[..., :vocab]).abs().max().item()


def test_gpt2_directory_gets_chatml_tokens_and_grown_embeddings(tmp_path):
    src = save_gpt2(tmp_path / "gpt2")
    lineage = prepare_base(BaseModelConfig(source=f"hf:{src}"), tmp_path, tmp_path / "out")
    assert lineage["added_tokens"] == [PAD, IM_START, IM_END] and lineage["revision"] is None
    assert lineage["architecture"] == "GPT2LMHeadModel" and lineage["chat_template"] is None
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert (tok.pad_id, tok.im_start_id, tok.im_end_id) == (400, 401, 402) and tok.eot_id < 400
    assert tok.encode(f"{IM_START}user\nhi{IM_END}", add_special_tokens=False).ids[0] == 401
    model, meta = load_trained_model(base_checkpoint(tmp_path / "out"))
    assert model.config.vocab_size == lineage["vocab_size"] == 403
    assert meta["base_model"]["weights_sha256"] == lineage["weights_sha256"]
    diff = _logits_diff(src, model, 400)
    print(f"gpt2 base: max |logits diff| on the original vocabulary = {diff:.2e}")
    assert diff < 1e-5, "the original vocabulary computes the model's own logits"
    wte = model.transformer.wte.weight
    assert torch.allclose(wte[400:], wte[:400].mean(0).expand(3, -1)), "new rows start at the mean embedding"


def test_qwen2_keeps_its_tokens_padded_rows_and_chat_template(tmp_path):
    src = save_qwen2(tmp_path / "qwen2")
    lineage = prepare_base(BaseModelConfig(source=f"hf:{src}"), tmp_path, tmp_path / "out")
    assert lineage["added_tokens"] == [PAD], "it has the ChatML tokens; only the pad token is added"
    assert lineage["vocab_size"] == 416, "the added token fits in the padded rows: no growth"
    assert "<|im_start|>assistant" in lineage["chat_template"]
    model, _ = load_trained_model(base_checkpoint(tmp_path / "out"))
    assert _logits_diff(src, model, 416) < 1e-5


def test_a_relative_directory_is_resolved_against_the_root(tmp_path):
    save_gpt2(tmp_path / "models" / "g")
    directory, revision = resolve_source(BaseModelConfig(source="hf:models/g"), tmp_path)
    assert directory == tmp_path / "models" / "g" and revision is None


def test_a_hub_id_resolves_through_the_hugging_face_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    commit = cache_as_hub(save_gpt2(tmp_path / "gpt2"), cache, "someone/tiny-gpt2")
    import huggingface_hub.constants as hub  # read when huggingface_hub is imported: set them where they live

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    cfg = BaseModelConfig(source="hf:someone/tiny-gpt2")
    directory, revision = resolve_source(cfg, tmp_path)
    assert revision == commit and directory == cache / "models--someone--tiny-gpt2" / "snapshots" / commit
    lineage = prepare_base(cfg, tmp_path, tmp_path / "out")
    assert (lineage["source"], lineage["revision"]) == ("hf:someone/tiny-gpt2", commit)
    with pytest.raises(FileNotFoundError, match="someone/absent.*LocalEntryNotFoundError"):  # offline, not cached
        resolve_source(BaseModelConfig(source="hf:someone/absent"), tmp_path)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"source": "gpt2"}, "write hf:<hub id or directory>"),
        ({"source": "hf:"}, "names no model"),
        ({"revision": "main"}, "without a source"),
    ],
)
def test_bad_settings_are_refused_by_name(fields, named):
    with pytest.raises(ValueError, match=named):
        BaseModelConfig(**fields)


def test_bad_sources_are_refused_naming_the_fix(tmp_path):
    src = save_gpt2(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="a directory has one revision"):
        resolve_source(BaseModelConfig(source=f"hf:{src}", revision="v1"), tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        resolve_source(BaseModelConfig(source="hf:./nowhere"), tmp_path)
    (src / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        prepare_base(BaseModelConfig(source=f"hf:{src}"), tmp_path, tmp_path / "out")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    shutil.copy(save_gpt2(tmp_path / "other") / "tokenizer.json", bert / "tokenizer.json")
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        prepare_base(BaseModelConfig(source=f"hf:{bert}"), tmp_path, tmp_path / "out2")


def test_grow_vocab_keeps_every_old_row_and_refuses_to_shrink():
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=50))
    grown = grow_vocab(model, 53)
    assert torch.equal(grown.lm_head.weight[:50], model.lm_head.weight)
    assert grow_vocab(model, 50) is model
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_vocab(model, 40)


def test_a_base_models_own_chat_template_is_kept_in_the_export(tmp_path):
    from lmcore.model.export import EOT, export_hf

    src = save_qwen2(tmp_path / "qwen2")
    lineage = prepare_base(BaseModelConfig(source=f"hf:{src}"), tmp_path, tmp_path / "out")
    model, _ = load_trained_model(base_checkpoint(tmp_path / "out"))
    folder = export_hf(
        model,
        tmp_path / "out" / "tokenizer.json",
        tmp_path / "hf",
        end_token=EOT,
        chat_template=lineage["chat_template"],
    )
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf_tok.chat_template == lineage["chat_template"]
    text = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert _logits_diff(folder, model, 416) < 1e-5, "exported (as Llama with q/k/v biases), it computes the same"
