"""Group ``pretrain``: pretrained_model, perplexity_report and (optional) variants_report."""
