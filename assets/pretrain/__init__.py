"""Group ``pretrain``: pretrained_model and perplexity_report."""
